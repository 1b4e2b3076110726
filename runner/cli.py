"""``sweep``: run a sweep from a config, then inspect, export and plot its run dir.

Exit codes: 0 success, 2 a bad config or argument (one line, nothing created), 1 a runtime failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Optional, Sequence

from rich.console import Console

from runner.config import ConfigError, SweepConfig, load_config

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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", module="optuna")
    try:
        return COMMANDS[args.command](args, console)
    except (ConfigError, UsageError) as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sweep: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, console: Console) -> int:
    config = load_config(args.config)
    if args.max_concurrent is not None:
        if args.max_concurrent < 1:
            raise UsageError(f"--max-concurrent: expected a positive integer, got {args.max_concurrent}")
        config = config.model_copy(update={"max_concurrent": args.max_concurrent})
    if args.dry_run:
        return _dry_run(config, console)
    return _execute(config, args.address, console, config_text=_read_text(args.config))


def _execute(config: SweepConfig, address: Optional[str], console: Console,
             config_text: Optional[str] = None) -> int:
    """Run (or continue) a sweep on Ray; print the table, write best.json and the plots."""
    from runner.driver import Sweep
    from runner.plots import plot_run
    from runner.progress import Progress
    from runner.ray_init import ray_session
    from runner.report import print_summary, write_best
    from runner.study import ResumeError

    objective = config.objectives[0]
    try:
        with ray_session(address):
            if config_text is not None:
                _save_config(config, config_text)
            with Progress(config.search.n_trials, objective.metric, objective.direction) as progress:
                sweep = Sweep(config, on_event=progress)
                summary = sweep.run()
    except ResumeError as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print_summary(console, config.run_dir())
    if sweep.stop_requested:
        console.print(f"stopped; continue with: sweep resume {config.run_dir()}", highlight=False)
        return EXIT_OK
    write_best(config.run_dir(), summary.best)
    plot_run(config.run_dir(), os.path.join(config.run_dir(), "plots"))
    console.print(f"run dir: {config.run_dir()}", highlight=False)
    return EXIT_OK if summary.counts.get("COMPLETE") else EXIT_RUNTIME


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _pause(args: argparse.Namespace, console: Console) -> int:
    from runner.control import ControlChannel

    channel = ControlChannel(_run_dir(args.run_dir))
    if channel.driver_alive():
        channel.request("pause", args.trial)
        console.print(f"trial {args.trial}: pause requested from the running sweep", highlight=False)
    else:
        channel.set_paused(channel.paused() | {args.trial})
        console.print(f"trial {args.trial}: paused (the sweep is stopped)", highlight=False)
    return EXIT_OK


def _migrate(args: argparse.Namespace, console: Console) -> int:
    from runner.control import ControlChannel

    channel = ControlChannel(_run_dir(args.run_dir))
    channel.request("migrate", args.trial, to=args.to)
    live = "from the running sweep" if channel.driver_alive() else "for when the sweep resumes"
    console.print(f"trial {args.trial}: migration requested {live}", highlight=False)
    return EXIT_OK


def _resume(args: argparse.Namespace, console: Console) -> int:
    from runner.config import parse_config
    from runner.control import ControlChannel

    run_dir = _run_dir(args.run_dir)
    channel = ControlChannel(run_dir)
    if channel.driver_alive():
        if args.trial is None:
            raise UsageError(f"{run_dir}: the sweep is running; name the paused TRIAL to resume")
        channel.request("resume", args.trial)
        console.print(f"trial {args.trial}: resume requested from the running sweep", highlight=False)
        return EXIT_OK
    paused = channel.paused()
    channel.set_paused(set() if args.trial is None else paused - {args.trial})
    import yaml

    source = os.path.join(run_dir, "config.yaml")
    try:
        data = yaml.safe_load(_read_text(source))
    except FileNotFoundError:
        raise UsageError(f"{run_dir}: not a run dir (no config.yaml)") from None
    config = parse_config({**data, "storage": run_dir}, source)
    return _execute(config, args.address, console)


def _save_config(config: SweepConfig, text: str) -> None:
    from runner.records import filesystem

    fs, root = filesystem(config.run_dir())
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/config.yaml") as sink:
        sink.write(text.encode())


def _dry_run(config: SweepConfig, console: Console) -> int:
    import optuna

    from runner.space import realize
    from runner.study import pruner, sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console.print(f"[bold]{config.name}[/]: {config.trainable}, {config.search.n_trials} trials, "
                  f"sampler {config.search.sampler}, pruner {config.pruner.kind}, "
                  f"max_concurrent {config.max_concurrent}")
    console.print("search space:", highlight=False)
    for section in ("hyperparams", "params"):
        for key, value in getattr(config, section).items():
            console.print(f"  {section}.{key}: {json.dumps(value)}", highlight=False)
    study = optuna.create_study(sampler=sampler(config), pruner=pruner(config),
                                directions=[o.direction for o in config.objectives])
    for _ in range(3):
        trial = study.ask()
        params, specs = realize(config.hyperparams, config.params, trial)
        console.print(f"trial {trial.number}: params {json.dumps(params)}", highlight=False)
        for name, spec in specs.items():
            console.print(f"  {name}: {json.dumps(spec)}", highlight=False)
    return EXIT_OK


def _run_dir(path: str) -> str:
    from runner.records import filesystem

    fs, root = filesystem(path)
    info = fs.get_file_info(root)
    if info.type.name != "Directory":
        raise UsageError(f"{path}: not a run dir (no such directory)")
    return path


def _status(args: argparse.Namespace, console: Console) -> int:
    from runner.report import print_summary

    print_summary(console, _run_dir(args.run_dir))
    return EXIT_OK


def _show(args: argparse.Namespace, console: Console) -> int:
    from runner.report import show_trial

    if not show_trial(console, _run_dir(args.run_dir), args.trial):
        raise UsageError(f"{args.run_dir}: no trial {args.trial}")
    return EXIT_OK


def _export(args: argparse.Namespace, console: Console) -> int:
    from runner.report import export

    out = args.out or os.path.join(_run_dir(args.run_dir), "export")
    for path in export(args.run_dir, out, args.format):
        console.print(path, highlight=False)
    return EXIT_OK


def _plot(args: argparse.Namespace, console: Console) -> int:
    from runner.plots import plot_run

    out = args.out or os.path.join(_run_dir(args.run_dir), "plots")
    for path in plot_run(args.run_dir, out):
        console.print(path, highlight=False)
    return EXIT_OK


COMMANDS = {"run": _run, "status": _status, "show": _show, "export": _export, "plot": _plot,
            "pause": _pause, "resume": _resume, "migrate": _migrate}

if __name__ == "__main__":
    sys.exit(main())
