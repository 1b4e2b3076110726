"""The run dir's tables: trials, metric history and applied hyperparameters, as Parquet files.

One file per trial and table (``trials/trial-00003.parquet``, ``history/...``, ``applied/...``), each
written whole to a temporary name and moved into place, so a crash never leaves a half-written
file and any reader (pandas, polars, DuckDB: ``read_parquet('runs/x/history/*.parquet')``) sees
complete trials only.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Union

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from runner.rundir import RunDir

TABLES = ("trials", "history", "applied", "lineage", "branches")

TRIALS_SCHEMA = pa.schema([
    ("number", pa.int64()), ("state", pa.string()), ("value", pa.float64()),
    ("values", pa.list_(pa.float64())), ("params", pa.string()), ("schedules", pa.string()),
    ("node", pa.string()), ("started", pa.timestamp("us", tz="UTC")),
    ("ended", pa.timestamp("us", tz="UTC")), ("restarts", pa.int64()),
    ("restart_log", pa.string()), ("last_step", pa.int64()), ("error", pa.string()),
    ("lost", pa.int64()), ("retries", pa.int64()), ("interruptions", pa.int64()),
    ("checkpoint", pa.string()), ("parent", pa.int64()), ("parent_step", pa.int64()),
    ("rung", pa.int64()),  # a cooldown branch's: the rung it scores its parent at
])
HISTORY_SCHEMA = pa.schema([("trial", pa.int64()), ("step", pa.int64()), ("metric", pa.string()),
                            ("value", pa.float64()), ("time", pa.timestamp("us", tz="UTC"))])
APPLIED_SCHEMA = pa.schema([("trial", pa.int64()), ("step", pa.int64()),
                            ("hyperparameter", pa.string()), ("value", pa.float64())])
LINEAGE_SCHEMA = pa.schema([  # one row per exploit of a PBT member (old and new specs as JSON)
    ("member", pa.int64()), ("generation", pa.int64()), ("step", pa.int64()),
    ("donor", pa.int64()), ("donor_step", pa.int64()), ("old", pa.string()), ("new", pa.string())])
BRANCHES_SCHEMA = pa.schema([  # one row per cooldown branch, in its trunk's file (fidelity)
    ("trial", pa.int64()), ("rung", pa.int64()), ("branch", pa.int64()),
    ("from_step", pa.int64()), ("to_step", pa.int64()), ("state", pa.string()),
    ("value", pa.float64()), ("metrics", pa.string()), ("checkpoint", pa.string())])
SCHEMAS = {"trials": TRIALS_SCHEMA, "history": HISTORY_SCHEMA, "applied": APPLIED_SCHEMA,
           "lineage": LINEAGE_SCHEMA, "branches": BRANCHES_SCHEMA}


def child_uri(uri: str, path: str) -> str:
    """``path`` inside the directory ``uri``, keeping a URI's query (endpoint override...)."""
    return RunDir(uri).uri_of(path)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or any pyarrow.fs URI."""
    run = RunDir(uri)
    return run.fs, run.root


class RunRecords:
    """Reads and writes the per-trial tables of one run dir."""

    def __init__(self, run_dir: Union[str, RunDir]) -> None:
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.run_dir = self.run.uri

    @staticmethod
    def _relative(table: str, number: int) -> str:
        return f"{table}/trial-{number:05d}.parquet"

    def write(self, table: str, number: int, rows: Iterable[Mapping[str, Any]]) -> None:
        data = pa.Table.from_pylist(list(rows), schema=SCHEMAS[table])
        sink = pa.BufferOutputStream()
        pq.write_table(data, sink)
        self.run.write_bytes(self._relative(table, number), sink.getvalue().to_pybytes())

    def read(self, table: str) -> pa.Table:
        """Every trial's rows; empty only when the table has no file yet."""
        parts = [self._parse(relative, table) for relative in self.run.list(table, ".parquet")]
        return pa.concat_tables(parts) if parts else SCHEMAS[table].empty_table()

    def read_trial(self, table: str, number: int) -> pa.Table:
        """One trial's rows; empty only when its file is absent."""
        try:
            return self._parse(self._relative(table, number), table)
        except FileNotFoundError:
            return SCHEMAS[table].empty_table()

    def _parse(self, relative: str, table: str) -> pa.Table:
        data = self.run.read_bytes(relative)
        try:  # no decode threads: one row needs none, and exiting right after aborted (exit 134)
            return pq.read_table(pa.BufferReader(data), schema=SCHEMAS[table], use_threads=False)
        except (pa.ArrowException, ValueError) as exc:
            raise self.run.error(relative, f"read the {table} table", exc) from None


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
    """The JSON text stored in the tables' string columns (params, schedules, restart_log)."""
    return json.dumps(value, sort_keys=True, default=str)
