"""Loggers: live trial metrics in the tools people already watch (TensorBoard, MLflow, your own).

Loggers hear the driver's event stream, never the trainable: a trainable stays a plain function,
and what a logger shows is what the run dir's tables hold (restarts and replayed reports
included). They run in a process of their own (``LoggerProcess``), on one thread, in event
order: a slow tracking server delays the logger, not the sweep, and a logger's CPU (an MLflow
run costs more than a trivial trial) is never the driver's.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from runner.config import ConfigError
from runner.context import resolve_class

if TYPE_CHECKING:
    from runner.config import LoggerConfig, SweepConfig

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 60.0
FLUSH_S = 1.0  # how live the loggers are: each call to a tracking server costs CPU
NICE = 10  # loggers' processes yield the CPU to the driver and the trials when both want it
IN_LOGGER_PROCESS = "SWEEP_IN_LOGGER_PROCESS"  # set in a logger's process: no sweep starts there


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
        """Once, at the end of the sweep; the loggers' process then exits (no ``atexit``)."""


def build_logger(spec: "LoggerConfig", where: str) -> Logger:
    """The configured logger, or a ConfigError naming ``where`` (``FILE: loggers.N``): unknown
    class, missing extra, bad options, a constructor that raises."""
    try:
        cls = BUILTIN.get(spec.kind) or resolve_class(spec.kind, Logger)
        return cls(**spec.options)
    except ModuleNotFoundError as exc:
        extra = f"; pip install 'sweep-runner[{spec.kind}]'" if spec.kind in BUILTIN else ""
        raise ConfigError(f"{where}: {spec.kind} needs {exc.name}, which is not "
                          f"installed{extra}") from None
    except Exception as exc:  # the user's class, built with the user's options
        raise ConfigError(f"{where}: {spec.kind}: {exc}") from None


class LogFanout:
    """Hands events to loggers on a background thread, in event order (in a logger's process),
    flushing them about once a second; a logger that raises is switched off with one warning,
    so it can never stop a sweep."""

    def __init__(self, loggers: list[Logger], run_dir: str, config: Optional["SweepConfig"],
                 close_timeout_s: Optional[float] = CLOSE_TIMEOUT_S) -> None:
        self.loggers = list(loggers)
        self.run_dir, self.config, self.close_timeout_s = run_dir, config, close_timeout_s
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
        self.thread.join(self.close_timeout_s)
        if self.thread.is_alive():
            log.warning("loggers: still sending after %.0f s; the rest is dropped",
                        self.close_timeout_s)
            return
        self._each(lambda lg: lg.close())

    def __call__(self, kind: str, info: dict, when: Optional[float] = None) -> None:
        if kind in _DISPATCH:
            self.events.put((kind, info, time.time() if when is None else when))

    def _drain(self) -> None:
        self._each(lambda lg: lg.open(self.run_dir, self.config))
        flushed = time.monotonic()
        while True:
            try:
                item = self.events.get(timeout=FLUSH_S)
            except queue.Empty:
                item = ()
            if item is None:
                self._each(lambda lg: lg.flush())
                return
            if item:
                kind, info, when = item
                _DISPATCH[kind](self, info, when)
            if time.monotonic() - flushed >= FLUSH_S:
                self._each(lambda lg: lg.flush())
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


_DISPATCH = {"queued": LogFanout._queued, "adopted": LogFanout._queued,
             "started": LogFanout._started,
             "report": LogFanout._report, "requeued": LogFanout._requeued,
             "paused": LogFanout._paused, "finished": LogFanout._finished}


class Loggers:
    """The driver's ``on_event`` for the configured loggers, each in a process of its own.

    Why processes: a logger's Python would hold the driver's GIL (an MLflow run's SQL took
    26 ms of it per trial, more than a trivial trial); and a logger that crashes its interpreter,
    hangs or lags must not take the sweep, nor the other loggers, with it. All start at once
    (their imports overlap) and each answers once it has built its logger, so a bad logger is a
    ``ConfigError`` before Ray starts.
    """

    def __init__(self, config: "SweepConfig", run_dir: str, source: str = "<config>") -> None:
        self.processes = [LoggerProcess(index, run_dir, config, source)
                          for index in range(len(config.loggers))]

    def __enter__(self) -> "Loggers":
        return self.start()

    def start(self) -> "Loggers":
        for process in self.processes:
            process.launch()
        try:
            for process in self.processes:
                process.wait_ready()
        except ConfigError:
            for process in self.processes:
                process.abort()
            raise
        return self

    def __call__(self, kind: str, info: dict) -> None:
        if kind in _DISPATCH:
            when = time.time()
            for process in self.processes:
                process.events.put((kind, info, when))

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.events.put(None)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S  # for all of them together
        for process in self.processes:
            process.wait(deadline)


class LoggerProcess:
    """One logger in a child process (``python -m runner.loggers``, a ``LogFanout`` there), fed
    the events as JSON lines through a pipe by a thread of the driver's, so a lagging child
    never blocks the driver. If the driver dies, the child still sends what it received, then
    exits (end of its input)."""

    def __init__(self, index: int, run_dir: str, config: "SweepConfig", source: str) -> None:
        self.index, self.run_dir, self.config, self.source = index, run_dir, config, source
        self.name = f"loggers.{index} ({config.loggers[index].kind})"
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.proc: Optional[subprocess.Popen] = None
        self.ready_fd = -1  # where the child answers, until read
        self.lost = False  # the child is gone and the user was told
        self.thread = threading.Thread(target=self._feed, name=f"sweep-{self.name}", daemon=True)

    def launch(self) -> None:
        ready_r, ready_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                   **{IN_LOGGER_PROCESS: "1"})
        self.proc = subprocess.Popen([sys.executable, "-m", "runner.loggers", str(ready_w),
                                      self.name],  # the name: for ps, and its warnings
                                     stdin=subprocess.PIPE, pass_fds=(ready_w,), env=env)
        os.close(ready_w)
        self.ready_fd = ready_r
        header = {"index": self.index, "run_dir": self.run_dir, "source": self.source,
                  "config": self.config.model_dump(mode="json", exclude_unset=True)}
        try:
            self.proc.stdin.write(_line(header))
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child died at start: its answer says so

    def wait_ready(self) -> None:
        """Wait until the child has built its logger (raises ``ConfigError``), then feed it."""
        with os.fdopen(self.ready_fd) as ready:
            self.ready_fd = -1
            answer = ready.read()
        if answer != "ok":
            raise ConfigError(answer.removeprefix("error:") if answer.startswith("error:") else
                              f"{self.source}: {self.name}: its process exited "
                              f"({self.proc.wait()}) at start")
        self.thread.start()

    def abort(self) -> None:
        """Stop the child at start (a logger could not be built): nothing was sent yet."""
        self.lost = True  # nothing to say: the ConfigError says it
        if self.ready_fd >= 0:
            os.close(self.ready_fd)
        self.proc.kill()
        self.proc.wait()
        if self.thread.ident:  # fed already: its feeder ends on the broken pipe
            self.events.put(None)
            self.thread.join()
        else:
            self.proc.stdin.close()

    def wait(self, deadline: float) -> None:
        """Once the end is queued: let the child send the rest until ``deadline``, then stop it."""
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.lost = True  # said here
            log.warning("%s: still sending after %.0f s; the rest of its events is dropped",
                        self.name, CLOSE_TIMEOUT_S)
            self.proc.kill()
            self.proc.wait()
        self.thread.join()  # it has written the end, or found the pipe broken
        if self.proc.returncode:
            self._lose()

    def _feed(self) -> None:
        """Write queued events to the child, as many as are waiting in one write. At once: a
        driver killed -9 loses to its loggers only what it had not yet handed over."""
        stdin, done = self.proc.stdin, False
        while not done:
            batch = [self.events.get()]
            while True:
                try:
                    batch.append(self.events.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is None
            try:
                stdin.write(b"".join(_line(item) for item in batch if item is not None))
                stdin.flush()
            except (BrokenPipeError, ValueError):
                self._lose()
                return
        stdin.close()

    def _lose(self) -> None:
        """Say once that the child died (its logger crashed the interpreter, or was killed)."""
        if not self.lost:
            self.lost = True
            log.warning("%s: its process ended (exit code %s); nothing more is logged by it in "
                        "this sweep", self.name, self.proc.wait())


def _line(item: Any) -> bytes:
    return (json.dumps(item, default=_plain) + "\n").encode()


def _plain(value: Any) -> Any:
    """numpy scalars and the like, as JSON numbers (or their text)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _child_main(ready_fd: int, label: str) -> int:
    """A logger's process: build it, answer ``ok`` (or ``error:LINE``) on ``ready_fd``, then
    hand each event line to a ``LogFanout`` until the driver closes the pipe."""
    from runner.config import parse_config

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's; it closes the pipe
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(levelname)s %(name)s [{label}]: %(message)s")
    with os.fdopen(ready_fd, "w") as ready:
        header = sys.stdin.buffer.readline()
        if not header:
            return 1
        header = json.loads(header)
        index, source = header["index"], header["source"]
        try:
            config = parse_config(header["config"], source)
            logger = build_logger(config.loggers[index], f"{source}: loggers.{index}")
        except ConfigError as exc:
            ready.write(f"error:{exc}")
            return 2
        ready.write("ok")
    os.nice(NICE)
    first = sys.stdin.buffer.readline()
    if not first:  # no event: a dry run, or another logger refused at start
        return 0
    # no deadline of its own: the driver's (CLOSE_TIMEOUT_S) ends this process
    with LogFanout([logger], header["run_dir"], config, close_timeout_s=None) as fanout:
        for line in itertools.chain([first], sys.stdin.buffer):
            kind, info, when = json.loads(line)
            fanout(kind, info, when)
    return 0


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
    restarts under ``sweep/``. A trial's new file purges the steps it will redo, and a report
    that goes back in steps (recovered from a checkpoint by a new driver) purges from its step,
    so TensorBoard shows what the history table holds. Written in place on its process's
    thread: tensorboardX's ``SummaryWriter`` adds a process queue and a thread per writer (7 ms
    of CPU per 16 ms trial, measured when loggers ran in the driver)."""

    def __init__(self, dir: Optional[str] = None) -> None:  # noqa: A002  (the config's key)
        import tensorboardX  # noqa: F401  (fail at config time when the extra is missing)

        if dir is not None and not isinstance(dir, str):
            raise ValueError(f"dir: expected a path, got {dir!r}")

        self.dir = dir
        self.writers: dict[int, Any] = {}
        self.restarts: dict[int, int] = {}
        self.attempts: dict[int, int] = {}
        self.last_step: dict[int, int] = {}  # the last step written to the trial's file

    def open(self, run_dir: str, config: "SweepConfig") -> None:
        if self.dir is None:
            if "://" in run_dir:
                raise ValueError(f"the run dir {run_dir} is not local: set the tensorboard "
                                 f"logger's dir option")
            self.dir = os.path.join(run_dir, "tensorboard")
        else:  # shared by sweeps, perhaps: a folder per run dir, named by sweep and a hash of
            # the run dir's path (run dirs often end alike: .../a/run, .../b/run)
            where = run_dir if "://" in run_dir else os.path.abspath(run_dir)
            name = config.name if config is not None else os.path.basename(where.rstrip("/"))
            self.dir = os.path.join(self.dir, f"{name}-{zlib.crc32(where.encode()):08x}")

    def logdir(self, number: int) -> str:
        return os.path.join(self.dir, f"trial-{number:05d}")

    def trial_started(self, number: int, *, step: int, resumed: bool, params: Optional[dict],
                      schedules: Optional[dict]) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.summary import text

        self._close(number)
        # one file per attempt: files are named by the second, so a retry within it would
        # overwrite the first file; names sort in attempt order
        attempt = self.attempts[number] = self.attempts.get(number, -1) + 1
        os.makedirs(self.logdir(number), exist_ok=True)
        earlier = resumed or bool(os.listdir(self.logdir(number)))  # (a previous driver's)
        writer = self.writers[number] = EventsWriter(os.path.join(self.logdir(number), "events"),
                                                     filename_suffix=f".{attempt:04d}")
        self.last_step[number] = step
        if earlier:
            self._purge_from(number, step + 1)
        if params is not None:
            self._add(number, text("sweep/params", _markdown(flat("", params))), step)
        if schedules is not None:
            self._add(number, text("sweep/schedules", _markdown(flat("", schedules))), step)

    def report(self, number: int, step: int, metrics: dict[str, float],
               hyperparams: dict[str, float], time: float) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        if step <= self.last_step.get(number, step - 1):
            self._purge_from(number, step)
        self.last_step[number] = step
        # one event for the report, its values as simple_value scalars (what tensorboardX's
        # scalar() makes, without its numpy checks: half the logger's CPU)
        values = [Summary.Value(tag=name, simple_value=value) for name, value in metrics.items()]
        values += [Summary.Value(tag=f"hyperparams/{name}", simple_value=value)
                   for name, value in hyperparams.items()]
        self._add(number, Summary(value=values), step, time)

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
        self._add(number, text("sweep/result", f"{state} {shown} {error}".strip()),
                  self.last_step.pop(number, 0))
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

    def _purge_from(self, number: int, step: int) -> None:
        """TensorBoard drops what earlier files and events logged at ``step`` and after."""
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        writer = self.writers.get(number)
        if writer is not None:
            writer.write_event(Event(step=step, wall_time=time.time(),
                                     session_log=SessionLog(status=SessionLog.START)))

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
    the state as the run's status and ``sweep.state`` tag.

    Everything goes at ``flush`` (about once a second), from a per-trial outbox that keeps what
    MLflow did not take: a tracking server that is down or restarting delays the data, it does
    not lose it (at the sweep's end, what is still held is counted in a warning). A resumed trial
    continues its run (found by its tags); reports it redoes after a restart repeat identical
    values, so steps already logged are not logged again."""

    def __init__(self, tracking_uri: Optional[str] = None, experiment: Optional[str] = None) -> None:
        for key, value in (("tracking_uri", tracking_uri), ("experiment", experiment)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key}: expected a string, got {value!r}")
        # MLflow retries an unreachable server for minutes by default; the user's settings win
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # 2 lines a trial
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # our warning says it
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.experiment = experiment
        self.experiment_id = ""
        self.run_dir = ""
        self.boxes: dict[int, _Outbox] = {}  # per trial, until its run is ended
        self.failing = ""  # why the last send failed, while it does

    def open(self, run_dir: str, config: "SweepConfig") -> None:
        self.run_dir = run_dir if "://" in run_dir else os.path.abspath(run_dir)
        self.experiment = self.experiment or config.name

    def trial_started(self, number: int, *, step: int, resumed: bool, params: Optional[dict],
                      schedules: Optional[dict]) -> None:
        from mlflow.entities import Param

        if number in self.boxes:  # back after a restart in this sweep
            return
        fields = {**flat("", params or {}), **flat("schedule", schedules or {})}
        self.boxes[number] = _Outbox(resumed, params=[Param(k, str(v)) for k, v in fields.items()])

    def report(self, number: int, step: int, metrics: dict[str, float],
               hyperparams: dict[str, float], time: float) -> None:
        from mlflow.entities import Metric

        box = self.boxes.get(number)
        if box is None or step <= box.logged:
            return
        box.logged, stamp = step, int(time * 1000)
        box.reports.append((step, [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
                            + [Metric(f"hyperparams/{k}", float(v), stamp, step)
                               for k, v in hyperparams.items()]))

    def restarted(self, number: int, why: str, from_step: int) -> None:
        from mlflow.entities import Metric

        box = self.boxes.get(number)
        if box is None:
            return
        box.restarts += 1
        box.metrics.append(Metric("sweep/restarts", box.restarts, int(time.time() * 1000),
                                  from_step))
        box.tags.update({"sweep.restarts": str(box.restarts),
                         "sweep.last_restart": f"{why}, from step {from_step}"})

    def trial_finished(self, number: int, state: str, values: dict[str, float],
                       error: str) -> None:
        from mlflow.entities import Metric

        box = self.boxes.get(number)
        if box is None:
            return
        stamp = int(time.time() * 1000)
        box.metrics += [Metric(f"value/{k}", float(v), stamp, 0) for k, v in values.items()]
        box.tags["sweep.state"] = state
        if error:
            box.tags["sweep.error"] = error[:5000]
        box.status = MLFLOW_STATUS.get(state, "FAILED")

    def flush(self) -> None:
        """Send every trial's outbox; at the first failure keep the rest for the next flush
        (that trial goes last, so one that MLflow refuses cannot hold the others)."""
        for number in list(self.boxes):
            try:
                self._send(number, self.boxes[number])
            except Exception as exc:  # a server down, restarting, or refusing this trial's data
                self.boxes[number] = self.boxes.pop(number)
                if not self.failing:
                    log.warning("MLflow: sending failed (%s); the data is held and sent again "
                                "each second", _short(exc))
                self.failing = _short(exc)
                return
        if self.failing:
            log.warning("MLflow: sending works again; the held data is sent")
            self.failing = ""

    def close(self) -> None:
        unsent = [box for box in self.boxes.values() if box.owes()]
        if unsent:
            log.warning("MLflow: %d trials' data could not be sent: %s", len(unsent),
                        self.failing)

    def _send(self, number: int, box: "_Outbox") -> None:
        """The trial's run (made or found first), then its outbox in as few calls as MLflow's
        limits allow (per call 100 params, 100 tags, 1000 entities in all), each part dropped
        from the outbox once MLflow has it; the run is ended once the trial is."""
        from mlflow.entities import RunTag

        if box.run_id is None:
            self._open_run(number, box)
        if box.reopen:
            self.client.update_run(box.run_id, status="RUNNING")
            box.reopen = False
        box.metrics[:0] = [m for _, metrics in box.reports for m in metrics]
        box.reports = []
        tags = [RunTag(k, v) for k, v in box.tags.items()]
        while box.params or box.metrics or tags:
            p, t = box.params[:100], tags[:100]
            m = box.metrics[:1000 - len(p) - len(t)]
            self.client.log_batch(box.run_id, metrics=m, params=p, tags=t)
            del box.params[:len(p)], box.metrics[:len(m)], tags[:len(t)]
            for tag in t:
                box.tags.pop(tag.key, None)
        if box.status is not None:
            self.client.set_terminated(box.run_id, box.status)
            del self.boxes[number]

    def _open_run(self, number: int, box: "_Outbox") -> None:
        if not self.experiment_id:
            found = self.client.get_experiment_by_name(self.experiment)
            self.experiment_id = (found.experiment_id if found else
                                  self.client.create_experiment(self.experiment))
        runs = self.client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.`sweep.trial` = '{number}' and "
                          f"tags.`sweep.run_dir` = '{self.run_dir}'") if box.resumed else []
        if runs:  # a previous driver's: its params are there, and its steps up to the last
            run = runs[0]
            last = max((m.step for m in self.client.get_metric_history(
                run.info.run_id, _first_metric(run))), default=-1)
            box.run_id, box.params, box.reopen = run.info.run_id, [], True
            box.reports = [(step, metrics) for step, metrics in box.reports if step > last]
            box.logged = max(box.logged, last)
        else:
            tags = {"sweep.trial": str(number), "sweep.run_dir": self.run_dir,
                    "mlflow.runName": f"trial-{number}"}
            box.run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id


@dataclass
class _Outbox:
    """What a trial's MLflow run is still owed."""

    resumed: bool  # a previous driver may have made its run
    params: list
    run_id: Optional[str] = None
    reopen: bool = False  # a previous driver's run, to mark RUNNING again
    logged: int = -1  # the last report step taken (sent, held, or in MLflow)
    reports: list = field(default_factory=list)  # (step, its metrics), not yet sent
    metrics: list = field(default_factory=list)  # restarts, values, and reports being sent
    tags: dict = field(default_factory=dict)
    restarts: int = 0
    status: Optional[str] = None  # the trial ended: end the run once the rest is sent

    def owes(self) -> bool:
        return bool(self.run_id is None or self.params or self.reports or self.metrics or
                    self.tags or self.status)


def _short(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _first_metric(run: Any) -> str:
    """A metric every report of the run logged, to find the last step logged."""
    names = sorted(k for k in run.data.metrics if not k.startswith(("sweep/", "value/")))
    return names[0] if names else "sweep/restarts"


BUILTIN: dict[str, type[Logger]] = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}


if __name__ == "__main__":
    from runner import loggers  # not this __main__ copy: user loggers subclass runner.loggers'

    code = loggers._child_main(int(sys.argv[1]), sys.argv[2])
    sys.stdout.flush()
    sys.stderr.flush()
    # every logger is closed: skip the interpreter's teardown of what they imported
    # (0.5 s for tensorboardX, 0.8 s with MLflow), which the driver would wait for
    os._exit(code)
