"""Reading a run dir for people: the summary table, live progress, one trial's story, exports,
the best schedule."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from runner.control import ControlChannel
from runner.records import TABLES, RunRecords
from runner.rundir import RunDir

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from runner.config import SweepConfig

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
EXPORT_FORMATS = ("parquet", "csv")


def print_summary(console: Console, run_dir: str, top: int = 10) -> None:
    rows = RunRecords(run_dir).read("trials").to_pylist()
    trials = [r for r in rows if r["rung"] is None]  # cooldown branches score trials
    branches = f" ({len(rows) - len(trials)} cooldown branches)" if len(rows) > len(trials) else ""
    counts: dict[str, int] = {}
    for row in trials:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    console.print(" ".join([f"{run_dir}: {len(trials)} finished trials",
                            *(f"{k.lower()} {v}" for k, v in sorted(counts.items()))]) + branches,
                  highlight=False)
    done = sorted((r for r in trials if r["state"] == "COMPLETE"), key=lambda r: r["value"])
    direction = _direction(run_dir)
    if direction == "maximize":
        done.reverse()
    several = any(len(r["values"] or []) > 1 for r in done)
    title = (f"trials by the first objective ({direction}); several objectives: no single best"
             if several else f"best trials ({direction})")
    table = Table(title=title, title_justify="left")
    for column in ("trial", "values" if several else "value", "learning_rate", "params",
                   "restarts"):
        table.add_column(column)
    for row in done[:top]:
        specs = json.loads(row["schedules"])
        lr = specs.get("learning_rate", {})
        value = (", ".join(f"{v:.6g}" for v in row["values"]) if several
                 else f"{row['value']:.6g}")
        table.add_row(str(row["number"]), value, _short(lr), row["params"], str(row["restarts"]))
    console.print(table)


def _direction(run_dir: str) -> str:
    import yaml

    text = RunDir(run_dir).read_text("config.yaml", None)
    if text is None:
        return "minimize"
    objective = (yaml.safe_load(text) or {}).get("objective", {})
    first = objective[0] if isinstance(objective, list) else objective
    return first.get("direction", "minimize")


def _short(spec: dict) -> str:
    fields = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in spec.items() if k != "kind")
    return f"{spec.get('kind', '')}({fields})" if spec else "-"


def print_progress(console: Console, run_dir: str) -> None:
    """What is not finished: a live driver's trials (from live.json), or a stopped sweep's
    paused trials and how to continue it."""
    channel = ControlChannel(run_dir)
    if channel.driver_alive():
        live = channel.live()
        if live is None:
            console.print("running: the driver has not listed its trials yet", highlight=False)
            return
        age = time.time() - float(live.get("updated", time.time()))
        trials = live.get("trials", [])
        console.print(f"running: {len(trials)} unfinished trials, driver {live.get('driver')} "
                      f"(pid {live.get('pid')} on {live.get('host')}, updated {age:.0f} s ago)",
                      highlight=False)
        table = Table(title="unfinished trials", title_justify="left")
        for column in ("trial", "state", "step", "node", "restarts", "of"):
            table.add_column(column)
        for row in trials:
            table.add_row(str(row.get("number")), str(row.get("state")), str(row.get("step")),
                          row.get("node") or "-", str(row.get("restarts", 0)),
                          lineage_note(row) or "-")
        console.print(table)
        return
    paused = sorted(channel.paused())
    from runner.config import ConfigError

    run = RunDir(run_dir)
    try:
        study = study_trials(run) or []
    except ConfigError as exc:  # the finished trials above are still worth showing
        console.print(f"unfinished trials unknown: {exc}", highlight=False, markup=False)
        study = []
    held = [t.number for t in study if t.state.name == "RUNNING" and t.number not in paused
            and t.system_attrs.get("held")]
    stopped = [t.number for t in study if t.state.name == "RUNNING" and t.number not in paused
               and t.number not in held]
    if held:
        console.print(f"paused by the search strategy (it resumes them): {_numbered(held)}",
                      highlight=False)
    if stopped:
        console.print(f"stopped mid-trial (resumable from their checkpoints): "
                      f"{_numbered(stopped)}", highlight=False)
    if paused:
        console.print(f"paused trials: {', '.join(map(str, paused))}", highlight=False)
    forks = [r for r in channel.pending() if r.get("action") == "fork"]
    for request in forks:
        budget = f", to {request['steps']} steps" if request.get("steps") else ""
        console.print(f"pending fork of trial {request['trial']} from step {request['at']}"
                      f"{budget}", highlight=False)
    if paused or held or stopped or forks:
        console.print(f"continue with: sweep resume {run_dir}", highlight=False)


@dataclass
class TrialInfo:
    """Where a trial stands, from the first source that knows it: the trials table (finished),
    live.json (a live driver's), the study (started, not finished, no live driver)."""

    number: int
    state: str  # COMPLETE / PRUNED / FAIL once finished, else running, queued, paused, ...
    finished: bool
    step: Optional[int] = None
    node: str = ""
    restarts: Optional[int] = None
    params: Optional[dict] = None
    schedules: Optional[dict] = None
    row: Optional[dict] = None  # its trials-table row
    held: bool = False  # paused by the search strategy alone: it resumes it


def find_trial(run_dir: Union[str, RunDir], number: int) -> Optional[TrialInfo]:
    """Trial ``number`` of the run, or None if neither the run dir nor the study has it."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    rows = RunRecords(run).read_trial("trials", number).to_pylist()
    if rows:
        return TrialInfo(number, rows[0]["state"], True, rows[0]["last_step"], rows[0]["node"],
                         rows[0]["restarts"], json.loads(rows[0]["params"]),
                         json.loads(rows[0]["schedules"]), rows[0])
    channel = ControlChannel(run)
    alive = channel.driver_alive()
    if alive:
        for row in (channel.live() or {}).get("trials", []):
            if row.get("number") == number:
                return TrialInfo(number, row.get("state", "running"), False, row.get("step"),
                                 row.get("node", ""), row.get("restarts"),
                                 held=bool(row.get("held")))
    frozen = next((t for t in study_trials(run) or [] if t.number == number), None)
    return None if frozen is None else _study_info(frozen, alive, channel)


def _study_info(frozen: "FrozenTrial", alive: bool, channel: ControlChannel) -> TrialInfo:
    state = frozen.state.name
    user_paused = frozen.number in channel.paused()
    held = bool(frozen.system_attrs.get("held")) and not user_paused
    if state == "RUNNING":
        state = "paused" if held or user_paused else \
            "running" if alive else "stopped"
    elif state not in FINISHED_STATES:
        state = state.lower()
    steps = frozen.intermediate_values
    return TrialInfo(frozen.number, state, state in FINISHED_STATES,
                     max(steps) if steps else None, frozen.user_attrs.get("node_id", ""),
                     frozen.user_attrs.get("restarts"),
                     frozen.user_attrs.get("params", frozen.params),
                     frozen.user_attrs.get("schedule_specs"), held=held)


def run_config(run: RunDir) -> Optional["SweepConfig"]:
    """The config ``sweep run`` saved in the run dir (storage: the run dir itself), or None."""
    import yaml

    from runner.config import ConfigError, parse_config

    source = run.uri_of("config.yaml")
    text = run.read_text("config.yaml", None)
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_config({**data, "storage": run.uri} if isinstance(data, dict) else data, source)


def study_trials(run: RunDir) -> Optional[list["FrozenTrial"]]:
    """The study's trials, read without creating anything; None without a saved config."""
    config = run_config(run)
    if config is None or ("://" in run.uri and not config.study_storage):
        return None
    if not config.study_storage and not run.exists("study.journal"):
        return []  # the journal runner.study.storage would open: no journal, no trials yet
    import optuna

    from runner.study import storage

    try:
        study = optuna.load_study(study_name=config.name, storage=storage(config))
    except KeyError:  # the study does not exist yet
        return []
    return study.get_trials(deepcopy=False)


def show_trial(console: Console, run_dir: str, number: int) -> bool:
    """Print trial ``number``'s state, params, schedules and history so far; False if no trial."""
    run = RunDir(run_dir)
    records = RunRecords(run)
    info = find_trial(run, number)
    history = records.read_trial("history", number)
    applied = records.read_trial("applied", number)
    if info is None and history.num_rows == 0:
        return False
    if info is not None and info.row is not None:
        row = info.row
        console.print(f"trial {number}: {row['state']} value={row['value']} node={row['node']} "
                      f"restarts={row['restarts']}", highlight=False)
    else:
        console.print(f"trial {number}: {_unfinished_line(info)}", highlight=False)
    if info is not None and info.params is not None:
        console.print(f"params: {json.dumps(info.params, sort_keys=True)}", highlight=False)
    for name, spec in ((info.schedules if info else None) or {}).items():
        console.print(f"  {name}: {json.dumps(spec)}", highlight=False)
    if info is not None and info.row is not None and info.row["error"]:
        console.print(f"error: {info.row['error']} (traceback: the study trial's 'traceback' "
                      f"user attribute)", highlight=False)
    if info is not None and info.row is not None and info.row.get("parent") is not None:
        rung = info.row.get("rung")
        what = "forked" if rung is None else f"the cooldown branch to rung {rung},"
        console.print(f"{what} from trial {info.row['parent']} at step {info.row['parent_step']}",
                      highlight=False)
    for branch in records.read_trial("branches", number).to_pylist():
        score = "-" if branch["value"] is None else f"{branch['value']:.6g}"
        console.print(f"rung {branch['rung']}: scored {score} by trial {branch['branch']} "
                      f"({branch['state']}), a cooldown from step {branch['from_step']}",
                      highlight=False)
    for exploit in records.read_trial("lineage", number).to_pylist():
        console.print(f"exploited trial {exploit['donor']} at step {exploit['step']} "
                      f"(generation {exploit['generation']}): its checkpoint, explored schedules",
                      highlight=False)
    if info is not None and info.row is not None and info.row.get("checkpoint"):
        console.print(f"final checkpoint: {run.uri_of(info.row['checkpoint'])}", highlight=False)
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


def lineage_note(row: dict) -> str:
    """What a trial is of: ``branch of 1 at rung 90``, ``fork of 1 at 72``, or ""."""
    if row.get("parent") is None:
        return ""
    if row.get("rung") is not None:
        return f"branch of {row['parent']} at rung {row['rung']}"
    return f"fork of {row['parent']} at {row['parent_step']}"


def _unfinished_line(info: Optional[TrialInfo]) -> str:
    if info is None:  # history rows, but no live driver nor saved config to say more
        return "not finished"
    fields = [f"{name}={value}" for name, value in
              (("step", info.step), ("node", info.node), ("restarts", info.restarts))
              if value not in (None, "")]
    return " ".join([info.state, *fields])


def export(run_dir: str, out: str, fmt: str) -> list[str]:
    """Write the run's tables into ``out`` (a path or URI) as Parquet or CSV; return their URIs.

    Every table is read and encoded before anything is written, and the files are committed
    together, so an error leaves the previous export (or none) as it was.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format: expected one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    records = RunRecords(run_dir)
    tables = {name: records.read(name) for name in TABLES}
    files = {f"{name}.{fmt}": _encode(table, fmt) for name, table in tables.items()
             if name not in ("lineage", "branches") or table.num_rows}  # PBT, fidelity only
    target = RunDir(out)
    target.write_files(files)
    return [target.uri_of(name) for name in files]


def _encode(table: pa.Table, fmt: str) -> bytes:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    if fmt == "parquet":
        pq.write_table(table, sink)
    else:
        pcsv.write_csv(_lists_as_json(table), sink)
    return sink.getvalue().to_pybytes()


def _lists_as_json(table: pa.Table) -> pa.Table:
    """CSV has no list type: each list column (the trials' ``values``) becomes JSON text."""
    for index, field in enumerate(table.schema):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            texts = [None if v is None else json.dumps(v) for v in table.column(index).to_pylist()]
            table = table.set_column(index, field.name, pa.array(texts, pa.string()))
    return table


def write_best(run_dir: str, best: Optional[dict]) -> None:
    if best is not None:
        RunDir(run_dir).write_json("best.json", best)


def _numbered(numbers: list[int]) -> str:
    """``trial 3`` or ``trials 0, 4``: a bare ``0`` reads as a count."""
    return f"trial{'s' * (len(numbers) > 1)} {', '.join(map(str, numbers))}"
