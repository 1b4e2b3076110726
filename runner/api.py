"""Running a sweep from Python (``from runner import run``), on the code path ``sweep run`` takes.

``run("sweeps/quickstart.yaml", n_trials=4)`` or ``run({...})`` starts a local Ray unless one is
running (and stops only the one it started), runs the sweep with its progress and loggers, writes
best.json and the plots, and returns a ``Result``: the tables as pandas DataFrames, the best
trial, and its final state.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import yaml
from rich.console import Console

from runner.config import ConfigError, SweepConfig, check_imports, load_config, parse_config

if TYPE_CHECKING:
    import pandas as pd

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
EXIT_STOPPED = 130  # stopped by Ctrl-C or SIGTERM: resumable, and not "done" for a script
ConfigLike = Union[str, "os.PathLike[str]", Mapping[str, Any], SweepConfig]


class SweepFailed(RuntimeError):
    """The sweep stopped early: the first trials all failed with the same error (it stopped
    instead of burning its budget), or the strategy raised. Fix it, then resume."""


@dataclass
class Outcome:
    """How a sweep run ended: the CLI's exit code and why it stopped early, if it did."""

    code: int
    run_dir: str
    abort_reason: Optional[str] = None


def execute(config: SweepConfig, address: Optional[str], console: Console,
            config_text: Optional[str] = None, unpause: Optional[set[int]] = frozenset(),
            source: str = "<config>") -> Outcome:
    """Run (or continue) a sweep on Ray; print the table, write best.json and the plots.

    ``unpause``: paused trials to resume (None: all), applied once this process drives the run.
    ``config_text`` is saved as the run dir's config.yaml once this process holds the run dir.
    Raises ``ResumeError`` for a resume the study refuses, ``ConfigError`` for bad loggers or
    a run dir that cannot be made or used.
    """
    from runner.driver import Sweep
    from runner.loggers import IN_LOGGER_PROCESS, Loggers
    from runner.plots import plot_run
    from runner.progress import Progress
    from runner.ray_init import ray_session
    from runner.report import print_summary, write_best
    from runner.rundir import RunDir

    import optuna

    if os.environ.get(IN_LOGGER_PROCESS):  # a script's module-level run(), imported there
        raise ConfigError("a sweep was started while a logger's process imported its module: "
                          "call run() under `if __name__ == \"__main__\":`")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress output says it all
    check_run_dir(config, source)  # before Ray starts: a mistake costs nothing
    objective = config.objectives[0]
    run_dir = config.run_dir()
    on_claimed = ((lambda: RunDir(run_dir).write_text("config.yaml", config_text))
                  if config_text is not None else None)
    with Loggers(config, run_dir, source) as loggers, ray_session(address):
        with Progress(config.search.n_trials, objective.metric, objective.direction) as progress:
            def on_event(kind: str, info: dict) -> None:
                progress(kind, info)
                loggers(kind, info)

            sweep = Sweep(config, on_event=on_event, unpause=unpause, on_claimed=on_claimed,
                          exit_at_once=True, source=source)
            summary = sweep.run()
    print_summary(console, run_dir)
    if sweep.abort_reason:
        print(f"sweep: stopped early: {sweep.abort_reason} (fix it, then: "
              f"{sweep.abort_fix or f'sweep resume {run_dir}'})", file=sys.stderr)
        return Outcome(EXIT_RUNTIME, run_dir, sweep.abort_reason)
    if sweep.stop_requested:
        console.print(f"stopped; continue with: sweep resume {run_dir}", highlight=False)
        return Outcome(EXIT_STOPPED, run_dir)
    write_best(run_dir, summary.best)
    for note in plot_run(run_dir, os.path.join(run_dir, "plots")).notes:
        console.print(f"plots: {note}", highlight=False)
    if summary.paused:
        console.print(f"paused trials {', '.join(map(str, summary.paused))}; continue with: "
                      f"sweep resume {run_dir}", highlight=False)
    console.print(f"run dir: {run_dir}", highlight=False)
    code = EXIT_OK if summary.counts.get("COMPLETE") or summary.paused else EXIT_RUNTIME
    return Outcome(code, run_dir)


def check_run_dir(config: SweepConfig, source: str) -> None:
    """Refuse, in one line naming the key, a local run dir the sweep could not make or use."""
    from runner.rundir import local_run_dir_problem

    path = config.run_dir()
    problem = "" if "://" in path else local_run_dir_problem(path, config.name)
    if problem:
        key = "storage" if config.storage else f"name (the run dir runs/{config.name})"
        raise ConfigError(f"{source}: {key}: {problem}")


def run(config: ConfigLike, *, n_trials: Optional[int] = None,
        max_concurrent: Optional[int] = None, storage: Optional[str] = None,
        overrides: Optional[Mapping[str, Any]] = None, address: Optional[str] = None,
        console: Optional[Console] = None) -> "Result":
    """Run (or continue) the sweep ``config`` describes: a YAML path, a dict or a SweepConfig.

    ``overrides`` sets keys by dotted path (``{"search.seed": 3, "budget.steps": 200}``) before
    validation, so a mistake names the key; ``n_trials``, ``max_concurrent`` and ``storage`` are
    the usual ones. ``address``: a Ray cluster ('auto', ray://host:port); by default a local Ray,
    or the one already initialised. Raises ``ConfigError`` for a bad config, ``SweepFailed`` when
    the first trials all fail alike.
    """
    wanted = {"search.n_trials": n_trials, "max_concurrent": max_concurrent, "storage": storage}
    wanted = {**{k: v for k, v in wanted.items() if v is not None}, **(overrides or {})}
    resolved, text, source = _resolve(config, wanted)
    outcome = execute(resolved, address, console or Console(), config_text=text, source=source)
    if outcome.abort_reason:
        raise SweepFailed(f"{outcome.abort_reason} (fix it, then run again: the sweep resumes)")
    return Result(outcome.run_dir)


def _resolve(config: ConfigLike, overrides: Mapping[str, Any]) -> tuple[SweepConfig, str, str]:
    """The validated config, the text to save as config.yaml, and the name errors use."""
    if isinstance(config, SweepConfig):
        config = config.model_dump(mode="json", exclude_defaults=True)
        source = "<SweepConfig>"
    elif isinstance(config, Mapping):
        config, source = copy.deepcopy(dict(config)), "<dict>"
    else:
        source = os.fspath(config)
        if not overrides:
            with open(source) as f:
                return load_config(source), f.read(), source
        load_config(source, check_trainable=False)  # YAML and keys: errors name the file
        with open(source) as f:
            config = yaml.safe_load(f)
    for path, value in overrides.items():
        _set(config, path, value, source)
    resolved = parse_config(config, source)
    check_imports(resolved, source)
    return resolved, yaml.safe_dump(config, sort_keys=False), source


def _set(data: dict, path: str, value: Any, source: str) -> None:
    *parents, last = path.split(".")
    for key in parents:
        child = data.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {path}: cannot override inside {key!r}, not a mapping")
        data = child
    data[last] = value


@dataclass(frozen=True)
class Best:
    """The best completed trial (by the objective): what to rebuild or replay it from."""

    number: int
    value: float
    params: dict
    schedules: dict
    checkpoint: Optional[str]  # the final checkpoint, relative to the run dir


class Result:
    """A run dir's results: ``trials``, ``history`` and ``applied`` as DataFrames (the Parquet
    tables, one row per trial, report, hyperparameter), ``best`` (None before a trial completes
    or with several objectives), ``load_best()``. ``Result(run_dir)`` reads any run dir."""

    def __init__(self, run_dir: str) -> None:
        from runner.records import RunRecords
        from runner.report import run_config
        from runner.rundir import RunDir

        self.run_dir = run_dir
        if not RunDir(run_dir).is_dir():
            raise FileNotFoundError(f"{run_dir}: not a run dir (no such directory)")
        records = RunRecords(run_dir)
        self.trials = _frame(records.read("trials"), ["number"])
        self.history = _frame(records.read("history"), ["trial", "step", "metric"])
        self.applied = _frame(records.read("applied"), ["trial", "step", "hyperparameter"])
        config = run_config(RunDir(run_dir))
        self.best = _best(self.trials, config) if config is not None else None

    def load_best(self, map_location: Optional[str] = None, like: Any = None) -> dict:
        """The best trial's final state tree (``ctx.track(model=...)`` saved under
        ``["objects"]["model"]``), on ``map_location``; ``like``: a JAX template pytree."""
        from runner.checkpoint import read_checkpoint
        from runner.rundir import RunDir

        if self.best is None:
            raise LookupError(f"{self.run_dir}: no best trial (no completed trial, or several "
                              f"objectives: pick one from result.trials)")
        if not self.best.checkpoint:
            raise LookupError(f"{self.run_dir}: trial {self.best.number} saved no final "
                              f"checkpoint (its trainable declares no state)")
        uri = RunDir(self.run_dir).uri_of(self.best.checkpoint)
        return read_checkpoint(uri, map_location=map_location, like=like).state

    def __repr__(self) -> str:
        best = "none" if self.best is None else f"trial {self.best.number} ({self.best.value:.6g})"
        return f"Result({self.run_dir!r}: {len(self.trials)} finished trials, best {best})"


def _frame(table: Any, order: list[str]) -> "pd.DataFrame":
    return table.to_pandas().sort_values(order, kind="stable").reset_index(drop=True)


def _best(trials: "pd.DataFrame", config: SweepConfig) -> Optional[Best]:
    import json

    done = trials[(trials["state"] == "COMPLETE") & trials["rung"].isna()]  # no branches
    if done.empty or config.objectives_count > 1:
        return None
    maximize = config.objectives[0].direction == "maximize"
    row = done.loc[done["value"].idxmax() if maximize else done["value"].idxmin()]
    return Best(int(row["number"]), float(row["value"]), json.loads(row["params"]),
                json.loads(row["schedules"]), row["checkpoint"] or None)
