"""``sweep``: run a sweep from a config, then inspect, export and plot its run dir.

Exit codes: 0 success, 2 a bad config or argument (one line, nothing created), 1 a runtime failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import warnings
from typing import Any, Optional, Sequence

from rich.console import Console

from runner.config import ConfigError, SweepConfig, load_config
from runner.rundir import RunDir, RunDirError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A user mistake on the command line or in the run dir; one line, exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or continue) the sweep a config describes")
    run.add_argument("config")
    run.add_argument("--address", help="Ray cluster: 'auto' or ray://host:port (default: local)")
    run.add_argument("--max-concurrent", type=int, help="override max_concurrent")
    run.add_argument("--dry-run", action="store_true",
                     help="validate, print the search space and the first sampled schedules")
    status = commands.add_parser("status", help="trial counts and the best trial of a run dir")
    status.add_argument("run_dir")
    show = commands.add_parser("show", help="a trial's metric history and schedule values")
    show.add_argument("run_dir")
    show.add_argument("trial", type=int)
    export = commands.add_parser("export", help="write the run's tables as Parquet or CSV")
    export.add_argument("run_dir")
    export.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    export.add_argument("--out", help="output directory (default: RUN_DIR/export)")
    pause = commands.add_parser("pause", help="checkpoint a trial and free its resources")
    pause.add_argument("run_dir")
    pause.add_argument("trial", type=int)
    resume = commands.add_parser("resume", help="continue a stopped sweep, or a paused trial")
    resume.add_argument("run_dir")
    resume.add_argument("trial", type=int, nargs="?")
    resume.add_argument("--address", help="Ray cluster for a stopped sweep (default: local)")
    migrate = commands.add_parser("migrate", help="move a trial to another node via a checkpoint")
    migrate.add_argument("run_dir")
    migrate.add_argument("trial", type=int)
    migrate.add_argument("--to", help="node id (or prefix) or node IP (default: any other node)")
    plot = commands.add_parser("plot", help="PNG plots: history, curves, best schedules")
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="output directory (default: RUN_DIR/plots)")
    children = {
        "fork": "a new trial continuing TRIAL from its checkpoint at STEP, with schedules that "
                "agree before STEP",
        "extend": "continue a COMPLETE wsd trial to a budget of N steps as a new trial (the same "
                  "cooldown, later)"}
    for name, text in children.items():  # both ask the driver for a child trial
        child = commands.add_parser(name, help=text)
        child.add_argument("run_dir")
        child.add_argument("trial", type=int)
        child.add_argument("--run", action="store_true", help="on a stopped sweep: run it now")
        child.add_argument("--address", help="Ray cluster for --run (default: local)")
        if name == "fork":
            child.add_argument("--at", type=int, required=True, help="the checkpoint step")
            child.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                               help="hyperparams.NAME.FIELD=VALUE for the child (repeatable)")
        else:
            child.add_argument("--steps", type=int, required=True, help="the new budget")
    replay = commands.add_parser("replay", help="write a one-trial config that trains TRIAL from "
                                                "scratch with its whole effective schedule")
    replay.add_argument("run_dir")
    replay.add_argument("trial", type=int)
    replay.add_argument("--out", required=True, help="the config file to write")
    replay.add_argument("--run", action="store_true", help="then run it (sweep run OUT)")
    replay.add_argument("--address", help="Ray cluster for --run (default: local)")
    dashboard = commands.add_parser("dashboard", help="optuna-dashboard on the run's study")
    dashboard.add_argument("run_dir")
    dashboard.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if os.getcwd() not in sys.path:  # a trainable beside the config imports, as with python -m
        sys.path.insert(0, os.getcwd())
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 160)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", module="optuna")
    try:
        return COMMANDS[args.command](args, console)
    except (ConfigError, UsageError) as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunDirError as exc:  # a run dir file that cannot be read or written
        print(f"sweep: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("sweep: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, console: Console) -> int:
    if os.path.isdir(args.config):
        raise UsageError(f"{args.config}: a directory, not a config file (a run dir continues "
                         f"with: sweep resume {args.config})")
    config = load_config(args.config)
    if args.max_concurrent is not None:
        if args.max_concurrent < 1:
            raise UsageError(f"--max-concurrent: expected a positive integer, got {args.max_concurrent}")
        config = config.model_copy(update={"max_concurrent": args.max_concurrent})
    if args.dry_run:
        from runner.api import check_run_dir
        from runner.loggers import Loggers

        check_run_dir(config, args.config)
        with Loggers(config, config.run_dir(), args.config):  # each built (and not opened)
            pass
        return _dry_run(config, console)
    return _execute(config, args.address, console, config_text=_read_text(args.config),
                    source=args.config)


def _execute(config: SweepConfig, address: Optional[str], console: Console,
             config_text: Optional[str] = None, unpause: Optional[set[int]] = frozenset(),
             source: str = "<config>") -> int:
    """Run (or continue) a sweep on Ray; print the table, write best.json and the plots.

    ``unpause``: paused trials to resume (None: all), applied once this process drives the run.
    The work is runner.api.execute, the code path the Python API shares.
    """
    from runner.api import execute
    from runner.study import ResumeError

    try:
        return execute(config, address, console, config_text=config_text, unpause=unpause,
                       source=source).code
    except ResumeError as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _pause(args: argparse.Namespace, console: Console) -> int:
    from runner.control import ControlChannel

    run = _run_dir(args.run_dir)
    _check_steerable(run, args.trial, "pause")
    channel = ControlChannel(run)
    if channel.driver_alive():
        channel.request("pause", args.trial)
        console.print(f"trial {args.trial}: pause requested from the running sweep", highlight=False)
    else:
        channel.set_paused(channel.paused() | {args.trial})
        console.print(f"trial {args.trial}: paused (the sweep is stopped)", highlight=False)
    return EXIT_OK


def _migrate(args: argparse.Namespace, console: Console) -> int:
    from runner.control import ControlChannel

    run = _run_dir(args.run_dir)
    _check_steerable(run, args.trial, "migrate")
    channel = ControlChannel(run)
    channel.request("migrate", args.trial, to=args.to)
    live = "from the running sweep" if channel.driver_alive() else "for when the sweep resumes"
    console.print(f"trial {args.trial}: migration requested {live}", highlight=False)
    return EXIT_OK


def _resume(args: argparse.Namespace, console: Console) -> int:
    from runner.control import ControlChannel
    from runner.report import run_config

    run = _run_dir(args.run_dir)
    if args.trial is not None:
        _check_steerable(run, args.trial, "resume")
    channel = ControlChannel(run)
    if channel.driver_alive():
        if args.trial is None:
            raise UsageError(f"{run.uri}: the sweep is running; name the paused TRIAL to resume")
        channel.request("resume", args.trial)
        console.print(f"trial {args.trial}: resume requested from the running sweep", highlight=False)
        return EXIT_OK
    config = run_config(run)
    if config is None:
        raise UsageError(f"{run.uri}: not a run dir (no config.yaml)")
    # paused.json is left as it is: the driver un-pauses only once it holds the run dir
    unpause = None if args.trial is None else {args.trial}
    return _execute(config, args.address, console, unpause=unpause,
                    source=run.uri_of("config.yaml"))


def _check_steerable(run: "RunDir", number: int, action: str) -> None:
    """Refuse to steer a trial the run does not have, or one that is finished."""
    from runner.report import find_trial

    info = find_trial(run, number)
    if info is None:
        raise UsageError(f"{run.uri}: no trial {number}")
    if info.finished:
        raise UsageError(f"{run.uri}: trial {number} is finished ({info.state}); "
                         f"nothing to {action}")
    if info.held and action == "resume":
        raise UsageError(f"{run.uri}: trial {number} is paused by the search strategy, which "
                         f"resumes it itself; nothing to resume (sweep resume {run.uri} "
                         f"continues a stopped sweep)")


def _dry_run(config: SweepConfig, console: Console) -> int:
    """Print the space, the configured sampler's first trials and the share of invalid points.

    The config check only proves the corners of every range valid: a point inside can still give
    an invalid schedule (warmup_steps 500 past decay_steps 300), a trial the sweep would fail. So
    random points, drawn apart from the configured sampler, measure how often that happens; when
    every one is invalid the sweep could not complete a trial, hence exit 2.
    """
    import optuna

    import schedules
    from runner.space import invalid_points, realize
    from runner.study import pruner, reseed, sampler

    def say(text: str) -> None:  # config values verbatim: rich markup would eat "[false, true]"
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console.print(f"[bold]{config.name}[/]: {config.trainable}, {_search_line(config)}, "
                  f"max_concurrent {config.max_concurrent}")
    say("search space:")
    for section in ("hyperparams", "params"):
        for key, value in getattr(config, section).items():
            say(f"  {section}.{key}: {json.dumps(value)}")
    study = optuna.create_study(sampler=sampler(config), pruner=pruner(config),
                                directions=[o.direction for o in config.objectives],
                                study_name=config.name)  # hyperband's brackets hash the name
    shown, wanted = 0, min(3, config.search.n_trials or 3)
    if config.fidelity.kind == "cooldown":
        say("the first trunks as sampled; in the sweep branches take trial numbers too, so a "
            "trunk's number, point and hyperband bracket may differ from these")
    for number in range(10):  # the first 3 valid trials, naming the invalid ones skipped
        reseed(study.sampler, config.search.seed, number)  # as the sweep will: the same points
        trial = study.ask()
        try:
            params, specs = realize(config.hyperparams, config.params, trial)
            if config.fidelity.kind == "cooldown":  # as the sweep plans a trunk's schedules
                from runner.cooldown import trunk_specs

                specs = trunk_specs(config, specs)
        except schedules.ScheduleError as exc:
            say(f"trial {trial.number}: invalid schedule, the sweep would fail it: {exc}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        say(f"trial {trial.number}: params {json.dumps(params)}")
        for name, spec in specs.items():
            say(f"  {name}: {json.dumps(spec)}")
        if config.fidelity.kind == "cooldown":
            say(f"  {_branches_line(config, study, trial.number, specs)}")
        shown += 1
        if shown == wanted:
            break
    count = 200
    invalid, reason = invalid_points(config.hyperparams, config.params, seed=config.search.seed,
                                     count=count)
    if not invalid:
        say(f"sampled {count} points: every one gives valid schedules")
        return EXIT_OK
    say(f"sampled {count} points: {invalid} ({100 * invalid / count:.1f}%) give an invalid "
        f"schedule, e.g. {reason}")
    if invalid < count:
        return EXIT_OK
    print(f"sweep: every sampled point gives an invalid schedule, so the sweep would fail every "
          f"trial (e.g. {reason})", file=sys.stderr)
    return EXIT_USAGE


def _branches_line(config: SweepConfig, study: Any, number: int, specs: dict) -> str:
    """Where a trunk is scored and where each of its cooldown branches starts."""
    from runner.cooldown import CooldownFidelity, branch

    rungs = CooldownFidelity(config, study).rungs_of(number)
    if not rungs:
        return "cooldown branches: none (its hyperband bracket runs to the full budget)"
    return "cooldown branches: " + ", ".join(
        f"rung {rung} from step {branch(config, specs, rung)[0]}" for rung in rungs)


def _search_line(config: SweepConfig) -> str:
    search = config.search
    if search.strategy != "optuna":
        return f"strategy {search.strategy}"
    return f"{search.n_trials} trials, sampler {search.sampler}, pruner {config.pruner.kind}"


def _run_dir(path: str) -> "RunDir":
    """A run dir: a directory with the config.yaml ``sweep run`` saves there, or one a live
    driver holds (a Sweep started from Python saves no config)."""
    from runner.control import ControlChannel
    from runner.rundir import RunDir

    run = RunDir(path)
    if not run.is_dir():
        hint = f"; a config file: sweep run {path}" if os.path.isfile(path) else ""
        raise UsageError(f"{path}: not a run dir (no such directory{hint})")
    if not run.exists("config.yaml") and not ControlChannel(run).driver_alive():
        raise UsageError(f"{path}: not a run dir (no config.yaml)")
    return run


def _status(args: argparse.Namespace, console: Console) -> int:
    from runner.report import print_progress, print_summary

    run = _run_dir(args.run_dir)
    print_summary(console, run.uri)
    print_progress(console, run.uri)
    return EXIT_OK


def _show(args: argparse.Namespace, console: Console) -> int:
    from runner.report import show_trial

    if not show_trial(console, _run_dir(args.run_dir).uri, args.trial):
        raise UsageError(f"{args.run_dir}: no trial {args.trial}")
    return EXIT_OK


def _export(args: argparse.Namespace, console: Console) -> int:
    from runner.report import export

    run = _run_dir(args.run_dir)
    for path in export(run.uri, args.out or run.uri_of("export"), args.format):
        console.print(path, highlight=False)
    return EXIT_OK


def _plot(args: argparse.Namespace, console: Console) -> int:
    from runner.plots import plot_run

    run = _run_dir(args.run_dir)
    plots = plot_run(run.uri, args.out or run.uri_of("plots"))
    for path in plots.paths:
        console.print(path, highlight=False)
    for note in plots.notes:
        console.print(f"plots: {note}", highlight=False)
    return EXIT_OK


def _dashboard(args: argparse.Namespace, console: Console) -> int:
    """optuna-dashboard on the run's study, bound to 127.0.0.1 (it has no authentication)."""
    from runner.report import run_config
    from runner.study import storage

    try:
        import optuna_dashboard
    except ModuleNotFoundError:
        raise UsageError("sweep dashboard needs optuna-dashboard: "
                         "pip install 'sweep-runner[dashboard]'") from None
    run = _run_dir(args.run_dir)
    config = run_config(run)
    if config is None:
        raise UsageError(f"{run.uri}: not a run dir (no config.yaml)")
    if not config.study_storage and not run.exists("study.journal"):
        raise UsageError(f"{run.uri}: no study yet (no study.journal)")
    console.print(f"optuna-dashboard for study {config.name}: http://127.0.0.1:{args.port}/ "
                  f"(Ctrl-C to stop)", highlight=False)
    try:
        optuna_dashboard.run_server(storage(config), host="127.0.0.1", port=args.port)
    except OSError as exc:
        raise UsageError(f"--port {args.port}: cannot listen on 127.0.0.1 ({exc.strerror}); "
                         f"choose another port") from None
    return EXIT_OK


def _fork(args: argparse.Namespace, console: Console) -> int:
    """Check the fork here (one line if it cannot continue its parent exactly), then hand it to
    the live driver, or leave it for the stopped sweep's next run."""
    from runner.control import ControlChannel
    from runner.lineage import ForkError, fork_notes, fork_problems, plan_extend, plan_fork
    from runner.report import find_trial, run_config, study_trials

    run = _run_dir(args.run_dir)
    info = find_trial(run, args.trial)
    if info is not None and info.schedules is None:  # running on a live sweep: the study has it
        frozen = next((t for t in study_trials(run) or [] if t.number == args.trial), None)
        specs = frozen.user_attrs.get("schedule_specs") if frozen is not None else None
        info = dataclasses.replace(info, schedules=specs)
    if info is None or info.schedules is None:
        raise UsageError(f"{run.uri}: no trial {args.trial}")
    row = info.row or {}
    if row.get("rung") is not None:  # a measurement of its trunk, never a trial of its own
        raise UsageError(f"{run.uri}: trial {args.trial} is a cooldown branch (it scores trial "
                         f"{row.get('parent')} at rung {row['rung']}); {args.command} its trunk, "
                         f"trial {row.get('parent')}, instead")
    try:
        if args.command == "extend":
            if info.state != "COMPLETE":
                raise ForkError(f"trial {args.trial} is {info.state}; only a COMPLETE trial "
                                f"can be extended")
            specs, at = plan_extend(run, args.trial, info.schedules, int(info.row["last_step"]),
                                    args.steps)
            extra = {"steps": args.steps}
        else:
            budget = int(info.row["last_step"]) if info.state == "COMPLETE" \
                else run_config(run).budget.steps
            fork_problems(args.at, budget)
            specs, at, extra = plan_fork(run, args.trial, info.schedules, args.at, args.set), \
                args.at, {}
            for note in fork_notes(specs, budget):
                console.print(note, highlight=False, markup=False)
    except ForkError as exc:
        raise UsageError(f"{run.uri}: {exc}") from None
    channel = ControlChannel(run)
    channel.request("fork", args.trial, at=at, specs=specs, **extra)
    what = f"{args.command} from step {at}"
    if channel.driver_alive():
        console.print(f"trial {args.trial}: {what} requested from the running sweep",
                      highlight=False)
        return EXIT_OK
    if not args.run:
        console.print(f"trial {args.trial}: {what} runs when the sweep does (sweep resume "
                      f"{run.uri}, or --run)", highlight=False)
        return EXIT_OK
    console.print(f"trial {args.trial}: {what}: resuming the sweep to run it", highlight=False)
    return _resume(argparse.Namespace(run_dir=args.run_dir, trial=None, address=args.address),
                   console)


def _replay(args: argparse.Namespace, console: Console) -> int:
    """A COMPLETE trial's replay config: its effective schedules from step 0, its lineage's
    seed; written whole, never over an existing file."""
    import yaml

    from runner.lineage import replay_config
    from runner.records import RunRecords
    from runner.report import find_trial, run_config

    run = _run_dir(args.run_dir)
    info = find_trial(run, args.trial)
    if info is None or info.schedules is None:
        raise UsageError(f"{run.uri}: no trial {args.trial}")
    if info.state != "COMPLETE":
        raise UsageError(f"{run.uri}: trial {args.trial} is {info.state}; only a COMPLETE trial "
                         f"can be replayed")
    if os.path.exists(args.out):
        raise UsageError(f"--out {args.out}: already exists; choose another path")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UsageError(f"--out {args.out}: no directory {os.path.dirname(args.out)!r}; "
                         f"create it or choose another path")
    records = RunRecords(run)
    trials = {r["number"]: r for r in records.read("trials").to_pylist()}
    exploits = records.read("lineage").to_pylist()
    config = run_config(run)
    if config is None:
        raise UsageError(f"{run.uri}: no config.yaml (the config the sweep ran with) to replay")
    data = replay_config(config, args.trial, trials, exploits,
                         run.uri_of(f"replays/trial-{args.trial}"))
    with open(args.out, "x") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    count = sum(e["member"] == args.trial for e in exploits)
    joined = max((len(s["boundaries"]) for s in data["hyperparams"].values()  # its lineage's
                  if isinstance(s, dict) and s.get("kind") == "join" and s.get("absolute")),
                 default=0)
    inherited = f", {joined} in its weights lineage" if joined > count else ""
    said = f" ({count} exploit{'' if count == 1 else 's'} of its own{inherited})" \
        if config.search.strategy == "pbt" else ""
    console.print(f"{args.out}: trial {args.trial} from scratch with its effective schedules"
                  f"{said}, run dir {data['storage']}"
                  f"{'' if args.run else f'; run it with: sweep run {args.out}'}",
                  highlight=False, markup=False)
    if not args.run:
        return EXIT_OK
    return _run(argparse.Namespace(config=args.out, address=args.address, max_concurrent=None,
                                   dry_run=False), console)


COMMANDS = {"run": _run, "status": _status, "show": _show, "export": _export, "plot": _plot,
            "pause": _pause, "resume": _resume, "migrate": _migrate, "fork": _fork, "extend": _fork,
            "dashboard": _dashboard, "replay": _replay}

if __name__ == "__main__":
    sys.exit(main())
