"""The run dir's tables: trials, metric history and applied hyperparameters, as Parquet files.

One file per trial and table (``trials/trial-00003.parquet``, ``history/...``, ``applied/...``), each
written whole to a temporary name and moved into place, so a crash never leaves a half-written
file and any reader (pandas, polars, DuckDB: ``read_parquet('runs/x/history/*.parquet')``) sees
complete trials only.
"""

from __future__ import annotations

import json
import os
import uuid
from urllib.parse import urlsplit, urlunsplit
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TABLES = ("trials", "history", "applied")

TRIALS_SCHEMA = pa.schema([
    ("number", pa.int64()), ("state", pa.string()), ("value", pa.float64()),
    ("values", pa.list_(pa.float64())), ("params", pa.string()), ("schedules", pa.string()),
    ("node", pa.string()), ("started", pa.timestamp("us", tz="UTC")),
    ("ended", pa.timestamp("us", tz="UTC")), ("restarts", pa.int64()),
    ("restart_log", pa.string()), ("last_step", pa.int64()), ("error", pa.string()),
])
HISTORY_SCHEMA = pa.schema([("trial", pa.int64()), ("step", pa.int64()), ("metric", pa.string()),
                            ("value", pa.float64()), ("time", pa.timestamp("us", tz="UTC"))])
APPLIED_SCHEMA = pa.schema([("trial", pa.int64()), ("step", pa.int64()),
                            ("hyperparameter", pa.string()), ("value", pa.float64())])
SCHEMAS = {"trials": TRIALS_SCHEMA, "history": HISTORY_SCHEMA, "applied": APPLIED_SCHEMA}


def child_uri(uri: str, path: str) -> str:
    """``path`` inside the directory ``uri``, keeping a URI's query (endpoint override...)."""
    if "://" not in uri:
        return os.path.join(os.path.abspath(uri), path)
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + path))


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or any pyarrow.fs URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


class RunRecords:
    """Reads and writes the per-trial tables of one run dir."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.fs, self.root = filesystem(run_dir)

    def _path(self, table: str, number: int) -> str:
        return f"{self.root}/{table}/trial-{number:05d}.parquet"

    def write(self, table: str, number: int, rows: Iterable[Mapping[str, Any]]) -> None:
        data = pa.Table.from_pylist(list(rows), schema=SCHEMAS[table])
        self.fs.create_dir(f"{self.root}/{table}", recursive=True)
        final = self._path(table, number)
        temp = f"{final}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(temp) as sink:
            pq.write_table(data, sink)
        self.fs.move(temp, final)

    def read(self, table: str) -> pa.Table:
        selector = pafs.FileSelector(f"{self.root}/{table}", allow_not_found=True)
        paths = sorted(i.path for i in self.fs.get_file_info(selector)
                       if i.path.endswith(".parquet"))
        parts = [pq.read_table(p, filesystem=self.fs, schema=SCHEMAS[table]) for p in paths]
        return pa.concat_tables(parts) if parts else SCHEMAS[table].empty_table()

    def read_trial(self, table: str, number: int) -> pa.Table:
        try:
            return pq.read_table(self._path(table, number), filesystem=self.fs,
                                 schema=SCHEMAS[table])
        except (FileNotFoundError, OSError):
            return SCHEMAS[table].empty_table()


def history_rows(number: int, reports: Iterable[Mapping[str, Any]]) -> tuple[list, list]:
    """Long-format rows of metrics and applied hyperparameters for a trial's reports."""
    from datetime import datetime, timezone

    metrics, applied = [], []
    for report in reports:
        when = datetime.fromtimestamp(report["time"], tz=timezone.utc)
        for name, value in report["metrics"].items():
            metrics.append({"trial": number, "step": report["step"], "metric": name,
                            "value": value, "time": when})
        for name, value in report.get("hyperparams", {}).items():
            applied.append({"trial": number, "step": report["step"], "hyperparameter": name,
                            "value": value})
    return metrics, applied


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
