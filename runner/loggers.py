"""Loggers: live trial metrics in the tools people already watch (TensorBoard, MLflow, your own).

Loggers hear the driver's event stream, never the trainable: a trainable stays a plain function,
and what a logger shows is what the run dir's tables hold (restarts and replayed reports
included). Calls happen on one background thread, in event order, so a slow tracking server
delays the logger, not the sweep.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from runner.config import ConfigError
from runner.context import resolve_class

if TYPE_CHECKING:
    from runner.config import LoggerConfig, SweepConfig

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 60.0
FLUSH_S = 1.0  # how live the loggers are: each call to a tracking server costs the driver's CPU


class Logger:
    """What a logger may override; every hook does nothing by default.

    A user logger is ``kind: package.module:Class`` in the config, built as ``Class(**options)``.
    ``params`` and ``schedules`` are None for a trial picked up from a previous driver (its run
    was started then).
    """

    def open(self, run_dir: str, config: "SweepConfig") -> None:
        """Once, before the first trial."""

    def trial_started(self, number: int, *, step: int, resumed: bool, params: Optional[dict],
                      schedules: Optional[dict]) -> None:
        """A worker starts (``resumed``: continues from ``step``) the trial."""

    def report(self, number: int, step: int, metrics: dict[str, float],
               hyperparams: dict[str, float], time: float) -> None:
        """One ``ctx.report``: its metrics and the hyperparameter values then in effect."""

    def restarted(self, number: int, why: str, from_step: int) -> None:
        """The trial left its worker (lost, retry, migrate, handover, pause); it goes on later."""

    def trial_finished(self, number: int, state: str, values: dict[str, float],
                       error: str) -> None:
        """The trial is COMPLETE, PRUNED or FAIL."""

    def flush(self) -> None:
        """About once a second while events come, and at the end: make what was logged visible."""

    def close(self) -> None:
        """Once, at the end of the sweep."""


def build_loggers(configs: list["LoggerConfig"], source: str = "<config>") -> list[Logger]:
    """The configured loggers, or a ConfigError naming ``loggers.N`` (unknown class, missing
    extra, bad options): found before Ray starts."""
    loggers = []
    for index, spec in enumerate(configs):
        where = f"{source}: loggers.{index}"
        try:
            cls = BUILTIN.get(spec.kind) or resolve_class(spec.kind, Logger)
            loggers.append(cls(**spec.options))
        except ModuleNotFoundError as exc:
            extra = f"; pip install 'sweep-runner[{spec.kind}]'" if spec.kind in BUILTIN else ""
            raise ConfigError(f"{where}: {spec.kind} needs {exc.name}, which is not "
                              f"installed{extra}") from None
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {spec.kind}: {exc}") from None
    return loggers


class LogFanout:
    """An ``on_event`` that hands the driver's events to loggers on a background thread.

    Putting an event on the queue is all the driver pays; a logger that raises is switched off
    with one warning, so it can never stop a sweep.
    """

    def __init__(self, loggers: list[Logger], run_dir: str, config: "SweepConfig") -> None:
        self.loggers = list(loggers)
        self.run_dir, self.config = run_dir, config
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.specs: dict[int, tuple[dict, dict]] = {}
        self.live: set[int] = set()  # trials started on a worker and not halted since
        self.early: dict[int, list] = {}  # reports saved with a checkpoint, told before a start
        self.thread = threading.Thread(target=self._drain, name="sweep-loggers", daemon=True)

    def __enter__(self) -> "LogFanout":
        self.thread.start()  # opens the loggers there: a slow tracking server never holds the sweep
        return self

    def __exit__(self, *exc) -> None:
        self.events.put(None)
        self.thread.join(CLOSE_TIMEOUT_S)
        if self.thread.is_alive():
            log.warning("loggers: still sending after %.0f s; the rest is dropped",
                        CLOSE_TIMEOUT_S)
            return
        self._each(Logger.close)

    def __call__(self, kind: str, info: dict) -> None:
        if kind in _DISPATCH:
            self.events.put((kind, info, time.time()))

    def _drain(self) -> None:
        self._each(lambda lg: lg.open(self.run_dir, self.config))
        flushed = time.monotonic()
        while True:
            try:
                item = self.events.get(timeout=FLUSH_S)
            except queue.Empty:
                item = ()
            if item is None:
                self._each(Logger.flush)
                return
            if item:
                kind, info, when = item
                _DISPATCH[kind](self, info, when)
            if time.monotonic() - flushed >= FLUSH_S:
                self._each(Logger.flush)
                flushed = time.monotonic()

    def _each(self, call: Callable[[Logger], Any]) -> None:
        for logger in list(self.loggers):
            try:
                call(logger)
            except Exception as exc:  # a logger must never stop the sweep
                self.loggers.remove(logger)
                log.warning("logger %s failed and is off for the rest of the sweep: %s",
                            type(logger).__name__, exc)

    def _queued(self, info: dict, when: float) -> None:
        self.specs[info["number"]] = (info["params"], info["specs"])

    def _started(self, info: dict, when: float) -> None:
        number = info["number"]
        params, specs = self.specs.get(number, (None, None))
        self._each(lambda lg: lg.trial_started(number, step=info["step"],
                                               resumed=info["resumed"], params=params,
                                               schedules=specs))
        self.live.add(number)
        for report, at in self.early.pop(number, []):
            self._report(report, at)

    def _report(self, info: dict, when: float) -> None:
        if info["number"] not in self.live:  # replayed before its start (a driver's recovery)
            self.early.setdefault(info["number"], []).append((info, when))
            return
        self._each(lambda lg: lg.report(info["number"], info["step"], info["metrics"],
                                        info["hyperparams"], when))

    def _requeued(self, info: dict, when: float) -> None:
        self.live.discard(info["number"])
        self._each(lambda lg: lg.restarted(info["number"], info["why"], info["from_step"]))

    def _paused(self, info: dict, when: float) -> None:
        self.live.discard(info["number"])
        self._each(lambda lg: lg.restarted(info["number"], "pause", info["step"]))

    def _finished(self, info: dict, when: float) -> None:
        self.live.discard(info["number"])
        self.early.pop(info["number"], None)
        self.specs.pop(info["number"], None)
        self._each(lambda lg: lg.trial_finished(info["number"], info["state"], info["values"],
                                                info.get("error") or ""))


_DISPATCH = {"queued": LogFanout._queued, "started": LogFanout._started,
             "report": LogFanout._report, "requeued": LogFanout._requeued,
             "paused": LogFanout._paused, "finished": LogFanout._finished}


def flat(prefix: str, value: Any) -> dict[str, Any]:
    """``{"learning_rate": {"kind": "wsd", ...}}`` as ``{"learning_rate.kind": "wsd", ...}``:
    the flat key/value form both TensorBoard text and MLflow params want."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: json.dumps(value) if isinstance(value, (list, tuple)) else value}


class TensorBoardLogger(Logger):
    """Event files, one directory per trial (``RUN_DIR/tensorboard/trial-00007``), written with
    tensorboardX's record writer: metrics as scalars, hyperparameters under ``hyperparams/``,
    restarts under ``sweep/``. A resumed trial's file purges the steps it will redo, so
    TensorBoard shows what the history table holds. Written in place on the loggers' thread:
    tensorboardX's ``SummaryWriter`` adds a process queue and a thread per writer, which cost
    a 16 ms trial 7 ms of the driver's CPU."""

    def __init__(self, dir: Optional[str] = None) -> None:  # noqa: A002  (the config's key)
        import tensorboardX  # noqa: F401  (fail at config time when the extra is missing)

        self.dir = dir
        self.writers: dict[int, Any] = {}
        self.restarts: dict[int, int] = {}
        self.attempts: dict[int, int] = {}

    def open(self, run_dir: str, config: "SweepConfig") -> None:
        if self.dir is None:
            if "://" in run_dir:
                raise ValueError(f"the run dir {run_dir} is not local: set the tensorboard "
                                 f"logger's dir option")
            self.dir = os.path.join(run_dir, "tensorboard")

    def logdir(self, number: int) -> str:
        return os.path.join(self.dir, f"trial-{number:05d}")

    def trial_started(self, number: int, *, step: int, resumed: bool, params: Optional[dict],
                      schedules: Optional[dict]) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.summary import text

        self._close(number)
        # one file per attempt: files are named by the second, so a retry within it would
        # overwrite the first file; names sort in attempt order
        attempt = self.attempts[number] = self.attempts.get(number, -1) + 1
        os.makedirs(self.logdir(number), exist_ok=True)
        writer = self.writers[number] = EventsWriter(os.path.join(self.logdir(number), "events"),
                                                     filename_suffix=f".{attempt:04d}")
        if resumed:  # TensorBoard drops what the file before logged past this step
            writer.write_event(Event(step=step + 1, wall_time=time.time(),
                                     session_log=SessionLog(status=SessionLog.START)))
        if params is not None:
            self._add(number, text("sweep/params", _markdown(flat("", params))), step)
        if schedules is not None:
            self._add(number, text("sweep/schedules", _markdown(flat("", schedules))), step)

    def report(self, number: int, step: int, metrics: dict[str, float],
               hyperparams: dict[str, float], time: float) -> None:
        from tensorboardX.summary import scalar

        for name, value in metrics.items():
            self._add(number, scalar(name, value), step, time)
        for name, value in hyperparams.items():
            self._add(number, scalar(f"hyperparams/{name}", value), step, time)

    def restarted(self, number: int, why: str, from_step: int) -> None:
        from tensorboardX.summary import scalar, text

        self.restarts[number] = self.restarts.get(number, 0) + 1
        self._add(number, scalar("sweep/restarts", self.restarts[number]), from_step)
        self._add(number, text("sweep/restart", f"{why}, from step {from_step}"), from_step)
        self._close(number)

    def trial_finished(self, number: int, state: str, values: dict[str, float],
                       error: str) -> None:
        from tensorboardX.summary import text

        shown = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
        self._add(number, text("sweep/result", f"{state} {shown} {error}".strip()), 0)
        self._close(number)
        self.restarts.pop(number, None)
        self.attempts.pop(number, None)

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for number in list(self.writers):
            self._close(number)

    def _add(self, number: int, summary: Any, step: int, walltime: Optional[float] = None) -> None:
        from tensorboardX.proto.event_pb2 import Event

        writer = self.writers.get(number)
        if writer is not None:
            writer.write_event(Event(wall_time=walltime or time.time(), step=step,
                                     summary=summary))

    def _close(self, number: int) -> None:
        writer = self.writers.pop(number, None)
        if writer is not None:
            writer.close()


def _markdown(fields: dict[str, Any]) -> str:
    return "\n".join(f"- `{key}`: {value}" for key, value in fields.items())


MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class MLflowLogger(Logger):
    """One MLflow run per trial in experiment ``experiment`` (default: the sweep's name), through
    ``MlflowClient`` (no global active run, so concurrent trials cannot mix): params and schedule
    specs as params, every report as metrics, restarts as the ``sweep/restarts`` metric and tags,
    the state as the run's status and ``sweep.state`` tag. Reports are batched per trial.

    A resumed trial continues its run (found by its tags); reports it redoes after a restart
    repeat identical values, so steps already logged are not logged again."""

    def __init__(self, tracking_uri: Optional[str] = None, experiment: Optional[str] = None) -> None:
        # MLflow retries an unreachable server for minutes by default; the user's settings win
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.experiment = experiment
        self.experiment_id = ""
        self.run_dir = ""
        self.runs: dict[int, str] = {}
        self.logged: dict[int, int] = {}  # the last step logged per trial
        self.restarts: dict[int, int] = {}
        self.pending: dict[str, list] = {}

    def open(self, run_dir: str, config: "SweepConfig") -> None:
        self.run_dir = run_dir if "://" in run_dir else os.path.abspath(run_dir)
        name = self.experiment or config.name
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(name)

    def trial_started(self, number: int, *, step: int, resumed: bool, params: Optional[dict],
                      schedules: Optional[dict]) -> None:
        from mlflow.entities import Param

        if number in self.runs:  # back after a restart in this sweep
            return
        run_id = self._find(number) if resumed else None
        if run_id is None:
            tags = {"sweep.trial": str(number), "sweep.run_dir": self.run_dir,
                    "mlflow.runName": f"trial-{number}"}
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            fields = {**flat("", params or {}), **flat("schedule", schedules or {})}
            items = [Param(k, str(v)) for k, v in fields.items()]
            for start in range(0, len(items), 100):  # MLflow takes at most 100 params a call
                self.client.log_batch(run_id, params=items[start:start + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.runs[number] = run_id

    def _find(self, number: int) -> Optional[str]:
        """The run a previous driver started for this trial, if any."""
        runs = self.client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.`sweep.trial` = '{number}' and "
                          f"tags.`sweep.run_dir` = '{self.run_dir}'")
        if not runs:
            return None
        run = runs[0]
        self.logged[number] = max((m.step for m in self.client.get_metric_history(
            run.info.run_id, _first_metric(run))), default=-1)
        return run.info.run_id

    def report(self, number: int, step: int, metrics: dict[str, float],
               hyperparams: dict[str, float], time: float) -> None:
        from mlflow.entities import Metric

        run_id = self.runs.get(number)
        if run_id is None or step <= self.logged.get(number, -1):
            return
        self.logged[number] = step
        stamp = int(time * 1000)
        batch = self.pending.setdefault(run_id, [])
        batch += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        batch += [Metric(f"hyperparams/{k}", float(v), stamp, step) for k, v in hyperparams.items()]

    def restarted(self, number: int, why: str, from_step: int) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self.runs.get(number)
        if run_id is None:
            return
        count = self.restarts[number] = self.restarts.get(number, 0) + 1
        self.pending.setdefault(run_id, []).append(
            Metric("sweep/restarts", count, int(time.time() * 1000), from_step))
        self._send(run_id, [RunTag("sweep.restarts", str(count)),
                            RunTag("sweep.last_restart", f"{why}, from step {from_step}")])

    def trial_finished(self, number: int, state: str, values: dict[str, float],
                       error: str) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self.runs.pop(number, None)
        if run_id is None:
            return
        stamp = int(time.time() * 1000)
        self.pending.setdefault(run_id, []).extend(
            Metric(f"value/{k}", float(v), stamp, 0) for k, v in values.items())
        tags = [RunTag("sweep.state", state)] + ([RunTag("sweep.error", error[:5000])] if error
                                                 else [])
        self._send(run_id, tags)
        self.client.set_terminated(run_id, MLFLOW_STATUS.get(state, "FAILED"))
        self.logged.pop(number, None)
        self.restarts.pop(number, None)

    def flush(self) -> None:
        for run_id in list(self.pending):
            self._send(run_id)

    def _send(self, run_id: str, tags: list = ()) -> None:
        """The run's pending metrics and ``tags`` in as few calls as MLflow allows."""
        metrics = self.pending.pop(run_id, [])
        for start in range(0, max(1, len(metrics)), 1000):  # MLflow's limit per call
            chunk = metrics[start:start + 1000]
            if chunk or tags:
                self.client.log_batch(run_id, metrics=chunk, tags=list(tags) if start == 0 else [])


def _first_metric(run: Any) -> str:
    """A metric every report of the run logged, to find the last step logged."""
    names = sorted(k for k in run.data.metrics if not k.startswith(("sweep/", "value/")))
    return names[0] if names else "sweep/restarts"


BUILTIN: dict[str, type[Logger]] = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
