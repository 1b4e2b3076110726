"""Reading a run dir for people: the summary table, one trial's story, exports, the best schedule."""

from __future__ import annotations

import json
import os
from typing import Optional

import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from runner.records import TABLES, RunRecords, filesystem


def print_summary(console: Console, run_dir: str, top: int = 10) -> None:
    trials = RunRecords(run_dir).read("trials").to_pylist()
    counts: dict[str, int] = {}
    for row in trials:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    console.print(f"{run_dir}: {len(trials)} finished trials "
                  + " ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())), highlight=False)
    done = sorted((r for r in trials if r["state"] == "COMPLETE"), key=lambda r: r["value"])
    direction = _direction(run_dir)
    if direction == "maximize":
        done.reverse()
    table = Table(title=f"best trials ({direction})", title_justify="left")
    for column in ("trial", "value", "learning_rate", "params", "restarts"):
        table.add_column(column)
    for row in done[:top]:
        specs = json.loads(row["schedules"])
        lr = specs.get("learning_rate", {})
        table.add_row(str(row["number"]), f"{row['value']:.6g}", _short(lr),
                      row["params"], str(row["restarts"]))
    console.print(table)


def _direction(run_dir: str) -> str:
    import yaml

    fs, root = filesystem(run_dir)
    try:
        with fs.open_input_stream(f"{root}/config.yaml") as f:
            objective = yaml.safe_load(f.read()).get("objective", {})
    except (FileNotFoundError, OSError):
        return "minimize"
    first = objective[0] if isinstance(objective, list) else objective
    return first.get("direction", "minimize")


def _short(spec: dict) -> str:
    fields = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in spec.items() if k != "kind")
    return f"{spec.get('kind', '')}({fields})" if spec else "-"


def show_trial(console: Console, run_dir: str, number: int) -> bool:
    records = RunRecords(run_dir)
    trial = records.read_trial("trials", number).to_pylist()
    history = records.read_trial("history", number)
    applied = records.read_trial("applied", number)
    if not trial and history.num_rows == 0:
        return False
    if trial:
        row = trial[0]
        console.print(f"trial {number}: {row['state']} value={row['value']} node={row['node']} "
                      f"restarts={row['restarts']}", highlight=False)
        console.print(f"params: {row['params']}", highlight=False)
        for name, spec in json.loads(row["schedules"]).items():
            console.print(f"  {name}: {json.dumps(spec)}", highlight=False)
        if row["error"]:
            console.print(f"error: {row['error']}", highlight=False)
    else:
        console.print(f"trial {number}: running", highlight=False)
    metrics = sorted(set(history.column("metric").to_pylist()))
    hps = sorted(set(applied.column("hyperparameter").to_pylist()))
    table = Table(title="history", title_justify="left")
    for column in ["step"] + metrics + hps:
        table.add_column(column, justify="right")
    rows: dict[int, dict] = {}
    for r in history.to_pylist():
        rows.setdefault(r["step"], {})[r["metric"]] = r["value"]
    for r in applied.to_pylist():
        rows.setdefault(r["step"], {})[r["hyperparameter"]] = r["value"]
    for step in sorted(rows):
        table.add_row(str(step), *(f"{rows[step][c]:.5g}" if c in rows[step] else "-"
                                   for c in metrics + hps))
    console.print(table)
    return True


def export(run_dir: str, out: str, fmt: str) -> list[str]:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    records = RunRecords(run_dir)
    os.makedirs(out, exist_ok=True)
    written = []
    for table_name in TABLES:
        table = records.read(table_name)
        path = os.path.join(out, f"{table_name}.{fmt}")
        if fmt == "parquet":
            pq.write_table(table, path)
        else:
            flat = table.set_column(table.schema.get_field_index("values"), "values",
                                    pc.cast(table.column("values"), "string")) \
                if "values" in table.column_names else table
            pcsv.write_csv(flat, path)
        written.append(path)
    return written


def write_best(run_dir: str, best: Optional[dict]) -> None:
    if best is None:
        return
    fs, root = filesystem(run_dir)
    with fs.open_output_stream(f"{root}/best.json") as sink:
        sink.write(json.dumps(best, indent=2, sort_keys=True).encode())
