"""The driver: owns the Optuna study through ask/tell and keeps ``max_concurrent`` Ray workers busy.

Each sampled point becomes concrete schedule specs; workers (long-lived actors) run trial after
trial and stream events back; reports feed the pruner; outcomes are told to the study and written
to the run dir. A trial whose worker dies is resumed from its latest checkpoint under the same
trial number; running trials of an interrupted sweep are picked up the same way on the next run.
"""

from __future__ import annotations

import logging
import signal
import uuid
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState

from runner import study as study_lib
from runner.config import SweepConfig
from runner.control import ControlChannel
from runner.context import TrialTask, derive_seed
from runner.records import RunRecords, child_uri, history_rows, to_json
from runner.space import realize
from runner.worker import task_payload

log = logging.getLogger("sweep")
HEARTBEAT_SECONDS = 10.0
CONTROL_POLL_SECONDS = 1.0  # heartbeats and the scan for orphaned trials, at most this often
HEARTBEAT_STALE_SECONDS = 60.0  # a driver silent this long is gone: its trials are resumed


@dataclass
class RunningTrial:
    """The driver's view of one trial in flight."""

    trial: optuna.Trial
    task: TrialTask
    worker: Any
    stream: Any
    started: float = field(default_factory=time.time)
    node: str = ""
    step: int = 0
    checkpoint_step: int = 0
    restarts: int = 0
    restart_log: list = field(default_factory=list)
    reports: dict = field(default_factory=dict)  # step -> report event
    reported_steps: set = field(default_factory=set)
    last_metrics: dict = field(default_factory=dict)
    applied: dict = field(default_factory=dict)
    node_id: str = ""
    lost_at: Optional[float] = None
    retries: int = 0


@dataclass
class SweepSummary:
    counts: dict[str, int]
    best: Optional[dict]
    run_dir: str


class Sweep:
    """One sweep run: ``Sweep(config).run()``. Ray must already be initialised."""

    def __init__(self, config: SweepConfig, *, on_event: Optional[Callable[[str, dict], None]] = None,
                 max_concurrent: Optional[int] = None) -> None:
        self.config = config
        self.run_dir = config.run_dir()
        self.records = RunRecords(self.run_dir)
        self.max_concurrent = max_concurrent or config.max_concurrent
        self.on_event = on_event or (lambda kind, info: None)
        self.study = study_lib.open_study(config)
        self.running: dict[Any, RunningTrial] = {}
        self.idle: list = []
        self.new_worker = study_lib.worker_factory(config)
        self.deadline = (time.monotonic() + config.search.timeout) if config.search.timeout else None
        self.objectives = [o.metric for o in config.objectives]
        self.pruning = config.pruner.kind != "none"
        self.stop_requested = False
        self.exhausted = False
        self.control = ControlChannel(self.run_dir)
        self.paused: set[int] = self.control.paused()
        self.superseded: set[int] = set()
        self.placement: dict[int, Optional[str]] = {}  # trial -> node to resume it on (migrate)
        self.driver_id = uuid.uuid4().hex[:12]
        self.dead_drivers: set[str] = set()
        self._last_heartbeat = float("-inf")
        self._last_poll = float("-inf")

    # --- trial lifecycle ---------------------------------------------------------------------

    def _checkpoint_root(self, number: int) -> str:
        return child_uri(self.run_dir, f"checkpoints/trial-{number:05d}")

    def _task(self, trial: optuna.Trial, params: dict, specs: dict) -> TrialTask:
        budget = self.config.budget
        return TrialTask(
            number=trial.number, trainable=self.config.trainable, params=params,
            schedule_specs=specs, steps=budget.steps, report_every=budget.report_every,
            checkpoint_every=budget.checkpoint_every,
            seed=derive_seed(self.config.seed, trial.number),
            checkpoint_root=self._checkpoint_root(trial.number),
            objective_metrics=self.objectives, wait_for_pruning=self.pruning,
            metadata={"sweep": self.config.name}, store_options=self.config.store_options())

    def _worker(self, number: Optional[int] = None):
        """A pooled worker, or a fresh one where the trial must go to (or leave) a given node."""
        if number in self.placement:
            return self.new_worker(self.placement.pop(number))
        return self.idle.pop() if self.idle else self.new_worker()

    def _launch(self, run: RunningTrial) -> None:
        run.stream = run.worker.run.remote(task_payload(run.task))
        self.running[run.stream] = run

    def _start_new(self) -> bool:
        with study_lib.ask_lock(self.study, self.run_dir):
            if len(self.study.get_trials(deepcopy=False)) >= self.config.search.n_trials:
                self.exhausted = True
                return False
            trial = self.study.ask()
        params, specs = realize(self.config.hyperparams, self.config.params, trial)
        trial.set_user_attr("params", params)
        trial.set_user_attr("schedule_specs", specs)
        trial.set_user_attr("driver", self.driver_id)
        trial.set_user_attr("checkpoint_root", self._checkpoint_root(trial.number))
        run = RunningTrial(trial=trial, task=self._task(trial, params, specs),
                           worker=self._worker(), stream=None)
        self._launch(run)
        self.on_event("started", {"number": trial.number, "specs": specs, "params": params})
        return True

    def _resume_orphans(self) -> None:
        """Running trials left by a previous driver continue from their checkpoints."""
        for request in self.control.take():
            self._apply(request)
        for frozen in self._orphans():
            self._resume(frozen)

    def _resume(self, frozen: optuna.trial.FrozenTrial) -> None:
        specs = frozen.user_attrs.get("schedule_specs")
        params = frozen.user_attrs.get("params")
        if specs is None or params is None:  # asked but never launched: nothing to resume
            self.study.tell(frozen.number, state=TrialState.FAIL)
            return
        study_lib.check_unchanged(self.config, frozen, specs)
        trial = optuna.Trial(self.study, frozen._trial_id)
        trial.set_user_attr("driver", self.driver_id)
        task = self._task(trial, params, specs)
        # another driver's trial keeps its checkpoints where that driver put them
        task.checkpoint_root = frozen.user_attrs.get("checkpoint_root", task.checkpoint_root)
        run = RunningTrial(trial=trial, task=task, worker=self._worker(frozen.number), stream=None)
        run.reported_steps = set(frozen.intermediate_values)
        run.reports = _reports_from_rows(
            self.records.read_trial("history", frozen.number).to_pylist(),
            self.records.read_trial("applied", frozen.number).to_pylist())
        run.restarts = int(frozen.user_attrs.get("restarts", 0))
        run.restart_log = list(frozen.user_attrs.get("restart_log", []))
        self._launch(run)
        self.on_event("resumed", {"number": frozen.number})

    def _in_flight(self, number: int) -> Optional[RunningTrial]:
        return next((r for r in self.running.values() if r.task.number == number), None)

    # --- control requests (pause, resume, migrate) -------------------------------------------

    def _apply(self, request: dict) -> None:
        number, action = int(request["trial"]), request["action"]
        run = self._in_flight(number)
        if action == "pause":
            if run is not None:
                run.worker.interrupt.remote(number, "paused")
            self.paused.add(number)
        elif action == "resume":
            self.paused.discard(number)
        elif action == "migrate":
            target = request.get("to")
            self.placement[number] = {"node": target, "soft": False} if target else None
            if run is not None:
                run.worker.interrupt.remote(number, "migrate")
        self.control.set_paused(self.paused)
        self.on_event("control", {"number": number, "action": action})

    def _poll_controls(self, force: bool = False) -> None:
        """Apply pause/resume/migrate requests; about once a second, heartbeat and adopt orphans."""
        for request in self.control.take():
            self._apply(request)
        now = time.monotonic()
        if not force and now - self._last_poll < CONTROL_POLL_SECONDS:
            return
        self._last_poll = now
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = now
            self.study.set_user_attr(f"heartbeat:{self.driver_id}", time.time())
        if not self.stop_requested and len(self.running) < self.max_concurrent:
            for frozen in self._orphans():
                if len(self.running) >= self.max_concurrent:
                    break
                self._resume(frozen)

    def _orphans(self) -> list[optuna.trial.FrozenTrial]:
        """RUNNING trials that no live driver runs: ours waiting for a worker, or a dead driver's."""
        attrs = self.study.user_attrs
        stale = time.time() - HEARTBEAT_STALE_SECONDS
        orphans = []
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if (frozen.number in self.paused or frozen.number in self.superseded
                    or self._in_flight(frozen.number) is not None):
                continue
            owner = frozen.user_attrs.get("driver")
            started = frozen.datetime_start.timestamp() if frozen.datetime_start else 0.0
            # a trial just asked by another driver has no owner yet: its start time vouches for it
            last_sign = max(attrs.get(f"heartbeat:{owner}", 0.0), 0.0 if owner else started)
            if owner == self.driver_id or owner in self.dead_drivers or last_sign < stale:
                orphans.append(frozen)
        return orphans

    def _can_start(self) -> bool:
        if self.stop_requested or len(self.running) >= self.max_concurrent:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return not self.exhausted

    # --- events ------------------------------------------------------------------------------

    def _handle(self, run: RunningTrial, event: dict) -> bool:
        """Apply one event; True when the trial is over."""
        kind = event["type"]
        if kind == "started":
            previous = run.node
            run.node, run.node_id = event.get("ip", ""), event.get("node_id", "")
            run.step = event["step"]
            # The worker's resume step is the truth: the last checkpoint announced may lag behind
            # the last durable one (a background save, or a kill just after a save). Reports after
            # it are redone and reported again.
            run.reports = {s: r for s, r in run.reports.items() if s <= run.step}
            if run.restart_log and run.restart_log[-1].get("to_node") is None:
                run.restart_log[-1].update(to_node=run.node_id, from_step=run.step)
                run.trial.set_user_attr("restart_log", run.restart_log)
            self.on_event("placed", {"number": run.task.number, "node_id": run.node_id,
                                     "pid": event.get("pid"), "step": event["step"],
                                     "accelerators": event.get("accelerators", {}),
                                     "previous": previous, "lost_at": run.lost_at})
        elif kind == "report":
            self._report(run, event)
        elif kind == "checkpoint":
            run.checkpoint_step = event["step"]
            self._write_history(run)
        elif kind in ("done", "pruned", "failed", "interrupted"):
            self._finish(run, event)
            return True
        elif kind == "superseded":  # another driver's worker claimed the trial: it is theirs now
            self.superseded.add(run.task.number)
            self.idle.append(run.worker)
            self.on_event("superseded", {"number": run.task.number, "reason": event["reason"]})
            return True
        return False

    def _report(self, run: RunningTrial, event: dict) -> None:
        step = event["step"]
        run.step = step
        run.last_metrics.update(event["metrics"])
        run.applied = event.get("hyperparams", {})
        run.reports[step] = event
        prune = False
        if self.pruning and self.objectives[0] in event["metrics"]:
            if step not in run.reported_steps:
                run.trial.report(event["metrics"][self.objectives[0]], step)
                run.reported_steps.add(step)
                prune = run.trial.should_prune()
        if event.get("awaits"):
            run.worker.decide.remote(run.task.number, prune)
        self.on_event("report", {"number": run.task.number, "step": step,
                                 "metrics": event["metrics"], "hyperparams": run.applied})

    def _finish(self, run: RunningTrial, event: dict) -> None:
        kind = event["type"]
        number = run.task.number
        if kind == "done":
            missing = [m for m in self.objectives if m not in event["values"]]
            if missing:
                event = {"type": "failed", "error": f"trainable never reported objective "
                         f"metric {missing[0]!r}", "traceback": ""}
                kind = "failed"
        if kind == "done":
            values = [event["values"][m] for m in self.objectives]
            self.study.tell(run.trial, values if len(values) > 1 else values[0])
            state = "COMPLETE"
        elif kind == "pruned":
            self.study.tell(run.trial, state=TrialState.PRUNED)
            state = "PRUNED"
        elif kind == "interrupted":
            state = "PAUSED" if event["reason"] == "paused" else "HANDOVER"
            if state == "PAUSED":
                self._record_restart(run, "paused")
        elif run.retries < self.config.retries and event.get("traceback"):
            run.retries += 1  # the trainable raised: rerun it from its latest checkpoint
            self._record_restart(run, f"retry after {event['error']}"[:200])
            self._launch(run)
            return
        else:
            run.trial.set_user_attr("error", event["error"])
            run.trial.set_user_attr("traceback", event["traceback"][-8000:])
            self.study.tell(run.trial, state=TrialState.FAIL)
            state = "FAIL"
        self._write_history(run)
        if state not in ("PAUSED", "HANDOVER"):
            self._write_trial(run, state, event)
        if event.get("reason") == "preempted":  # its process got SIGTERM: let it go
            import ray

            ray.kill(run.worker, no_restart=True)
            self._handover(run)
            return
        self.idle.append(run.worker)
        if event.get("reason") == "migrate":
            self._handover(run)
            return
        self.on_event("finished", {"number": number, "state": state, "event": event})

    def _handover(self, run: RunningTrial) -> None:
        """Continue a trial that stopped at a checkpoint (SIGTERM, migrate) on another worker."""
        if self.stop_requested:
            return
        self._record_restart(run, "handover")
        if self.placement.get(run.task.number) is None:  # leave the node it was on
            self.placement[run.task.number] = study_lib.other_node(run.node_id)
        run.worker = self._worker(run.task.number)
        self._launch(run)
        self.on_event("restarted", {"number": run.task.number, "from_step": run.checkpoint_step})

    def _record_restart(self, run: RunningTrial, reason: str) -> None:
        run.restarts += 1
        run.lost_at = time.time()
        run.restart_log.append({"time": run.lost_at, "from_node": run.node_id,
                                "from_step": run.checkpoint_step, "reason": reason,
                                "to_node": None})
        run.trial.set_user_attr("restarts", run.restarts)
        run.trial.set_user_attr("restart_log", run.restart_log)

    def _write_history(self, run: RunningTrial) -> None:
        metrics, applied = history_rows(run.task.number, run.reports.values())
        self.records.write("history", run.task.number, metrics)
        self.records.write("applied", run.task.number, applied)

    def _write_trial(self, run: RunningTrial, state: str, event: dict) -> None:
        values = [event["values"][m] for m in self.objectives] if state == "COMPLETE" else None
        row = {
            "number": run.task.number, "state": state,
            "value": values[0] if values else None, "values": values,
            "params": to_json(run.task.params), "schedules": to_json(run.task.schedule_specs),
            "node": run.node, "started": datetime.fromtimestamp(run.started, tz=timezone.utc),
            "ended": datetime.now(tz=timezone.utc), "restarts": run.restarts,
            "restart_log": to_json(run.restart_log), "last_step": run.step,
            "error": event.get("error"),
        }
        self.records.write("trials", run.task.number, [row])

    def _lost(self, run: RunningTrial, error: BaseException) -> None:
        """The worker process or its node died: restart the trial from its checkpoint elsewhere."""
        if run.restarts >= self.config.max_restarts:
            self._finish(run, {"type": "failed", "error": f"worker lost {run.restarts + 1} times; "
                               f"last: {type(error).__name__}", "traceback": str(error)})
            self.idle.remove(run.worker)
            return
        self._record_restart(run, type(error).__name__)
        run.worker = self.new_worker()
        self._launch(run)
        self.on_event("restarted", {"number": run.task.number, "from_step": run.checkpoint_step})

    # --- main loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Checkpoint every running trial at its next step and stop; the sweep stays resumable."""
        self.stop_requested = True
        for run in self.running.values():
            run.worker.interrupt.remote(run.task.number, "stopped")

    def run(self) -> SweepSummary:
        previous_driver = self.control.dead_driver()
        if previous_driver:
            self.dead_drivers.add(previous_driver)
        if self.control.driver_alive():
            raise study_lib.ResumeError(f"{self.run_dir}: another sweep process drives this run "
                                        f"dir; use sweep pause/resume/migrate to steer it")
        study_lib.check_storage_reachable(self.config)
        self.control.claim_driver(self.driver_id)
        self._beat()
        previous = self._install_interrupt_handler()
        try:
            self._resume_orphans()
            self._loop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            self.study.set_user_attr(f"heartbeat:{self.driver_id}", 0.0)  # gone: trials up for grabs
            self.control.release_driver()
        return self.summary()

    def _beat(self) -> None:
        self._last_heartbeat = time.monotonic()
        self.study.set_user_attr(f"heartbeat:{self.driver_id}", time.time())

    def _install_interrupt_handler(self):
        """First Ctrl-C: checkpoint and stop cleanly. Second: stop at once (still resumable)."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_interrupt(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.on_event("stopping", {})
            self.stop()

        return signal.signal(signal.SIGINT, on_interrupt)

    def _loop(self) -> None:
        import ray

        while True:
            while self._can_start():
                self._start_new()
            if not self.running:
                self._poll_controls(force=True)  # a resume request or an orphan may be waiting
                if not self.running:
                    break
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
            self.on_event("tick", {})
            for stream in ready:
                run = self.running[stream]  # stays listed while its events are handled
                try:
                    batch = ray.get(next(stream))
                except StopIteration:
                    del self.running[stream]
                    continue
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                        ray.exceptions.WorkerCrashedError) as exc:
                    del self.running[stream]
                    self._lost(run, exc)
                    continue
                over = False
                for event in batch:
                    over = self._handle(run, event) or over
                if over:
                    del self.running[stream]
            self._poll_controls()

    def summary(self) -> SweepSummary:
        trials = self.study.get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        best = None
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        if completed and len(self.objectives) == 1:
            t = self.study.best_trial
            best = {"number": t.number, "value": t.value,
                    "schedules": t.user_attrs.get("schedule_specs"),
                    "params": t.user_attrs.get("params")}
        return SweepSummary(counts=counts, best=best, run_dir=self.run_dir)


def _reports_from_rows(history: list[dict], applied: list[dict]) -> dict[int, dict]:
    """A trial's reports rebuilt from its history and applied tables (for a resumed driver)."""
    by_step: dict[int, dict] = {}
    for row in history:
        report = by_step.setdefault(row["step"], {"step": row["step"], "metrics": {},
                                                  "time": row["time"].timestamp(),
                                                  "hyperparams": {}})
        report["metrics"][row["metric"]] = row["value"]
    for row in applied:
        if row["step"] in by_step:
            by_step[row["step"]]["hyperparams"][row["hyperparameter"]] = row["value"]
    return by_step
