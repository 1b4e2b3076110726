"""The driver: owns the Optuna study through ask/tell and keeps ``max_concurrent`` Ray workers busy.

Each sampled point becomes concrete schedule specs; workers (long-lived actors) run trial after
trial and stream events back; reports feed the pruner; outcomes are told to the study and written
to the run dir. A trial whose worker dies is resumed from its latest checkpoint under the same
trial number; running trials of an interrupted sweep are picked up the same way on the next run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState

from runner import study as study_lib
from runner.config import OPTIMIZER_HYPERPARAMS, SweepConfig
from runner.context import TrialTask, derive_seed
from runner.records import RunRecords, history_rows, to_json
from runner.space import realize
from runner.worker import TrialWorker, task_payload

log = logging.getLogger("sweep")


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
    reports: list = field(default_factory=list)
    reported_steps: set = field(default_factory=set)
    last_metrics: dict = field(default_factory=dict)
    applied: dict = field(default_factory=dict)


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
        self.worker_cls = study_lib.worker_class(config)
        self.deadline = (time.monotonic() + config.search.timeout) if config.search.timeout else None
        self.objectives = [o.metric for o in config.objectives]
        self.pruning = config.pruner.kind != "none"
        self.stop_requested = False

    # --- trial lifecycle ---------------------------------------------------------------------

    def _checkpoint_root(self, number: int) -> str:
        return f"{self.run_dir.rstrip('/')}/checkpoints/trial-{number:05d}"

    def _task(self, trial: optuna.Trial, params: dict, specs: dict) -> TrialTask:
        budget = self.config.budget
        return TrialTask(
            number=trial.number, trainable=self.config.trainable, params=params,
            schedule_specs=specs, steps=budget.steps, report_every=budget.report_every,
            checkpoint_every=budget.checkpoint_every,
            seed=derive_seed(self.config.seed, trial.number),
            checkpoint_root=self._checkpoint_root(trial.number),
            objective_metrics=self.objectives, wait_for_pruning=self.pruning,
            metadata={"sweep": self.config.name})

    def _worker(self):
        return self.idle.pop() if self.idle else self.worker_cls.remote()

    def _launch(self, run: RunningTrial) -> None:
        run.stream = run.worker.run.remote(task_payload(run.task))
        self.running[run.stream] = run

    def _start_new(self) -> bool:
        trial = self.study.ask()
        params, specs = realize(self.config.hyperparams, self.config.params, trial)
        trial.set_user_attr("params", params)
        trial.set_user_attr("schedule_specs", specs)
        run = RunningTrial(trial=trial, task=self._task(trial, params, specs),
                           worker=self._worker(), stream=None)
        self._launch(run)
        self.on_event("started", {"number": trial.number, "specs": specs, "params": params})
        return True

    def _resume_orphans(self) -> None:
        """Running trials left by a previous driver continue from their checkpoints."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            specs = frozen.user_attrs.get("schedule_specs")
            params = frozen.user_attrs.get("params")
            if specs is None or params is None:
                self.study.tell(frozen.number, state=TrialState.FAIL)
                continue
            study_lib.check_unchanged(self.config, frozen, specs)
            trial = optuna.Trial(self.study, frozen._trial_id)
            run = RunningTrial(trial=trial, task=self._task(trial, params, specs),
                               worker=self._worker(), stream=None)
            run.reported_steps = set(frozen.intermediate_values)
            previous = self.records.read_trial("history", frozen.number).to_pylist()
            run.reports = _reports_from_rows(previous)
            self._launch(run)
            self.on_event("resumed", {"number": frozen.number})

    def _finished_count(self) -> int:
        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return len(self.study.get_trials(deepcopy=False, states=done))

    def _can_start(self) -> bool:
        if self.stop_requested or len(self.running) >= self.max_concurrent:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return self._finished_count() + len(self.running) < self.config.search.n_trials

    # --- events ------------------------------------------------------------------------------

    def _handle(self, run: RunningTrial, event: dict) -> bool:
        """Apply one event; True when the trial is over."""
        kind = event["type"]
        if kind == "started":
            run.node = event.get("ip", "")
            run.step = event["step"]
        elif kind == "report":
            self._report(run, event)
        elif kind == "checkpoint":
            run.checkpoint_step = event["step"]
            self._write_history(run)
        elif kind in ("done", "pruned", "failed", "interrupted"):
            self._finish(run, event)
            return True
        return False

    def _report(self, run: RunningTrial, event: dict) -> None:
        step = event["step"]
        run.step = step
        run.last_metrics.update(event["metrics"])
        run.applied = event.get("hyperparams", {})
        run.reports = [r for r in run.reports if r["step"] != step] + [event]
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
            state = "PAUSED"
        else:
            run.trial.set_user_attr("error", event["error"])
            run.trial.set_user_attr("traceback", event["traceback"][-8000:])
            self.study.tell(run.trial, state=TrialState.FAIL)
            state = "FAIL"
        self._write_history(run)
        if state != "PAUSED":
            self._write_trial(run, state, event)
        self.idle.append(run.worker)
        self.on_event("finished", {"number": number, "state": state, "event": event})

    def _write_history(self, run: RunningTrial) -> None:
        metrics, applied = history_rows(run.task.number, run.reports)
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
        number = run.task.number
        if run.restarts >= self.config.max_restarts:
            self._finish(run, {"type": "failed", "error": f"worker lost {run.restarts + 1} times; "
                               f"last: {type(error).__name__}", "traceback": str(error)})
            self.idle.remove(run.worker)
            return
        run.restarts += 1
        run.restart_log.append({"time": time.time(), "from_node": run.node,
                                "from_step": run.checkpoint_step, "reason": type(error).__name__})
        run.reports = [r for r in run.reports if r["step"] <= run.checkpoint_step]
        run.worker = self.worker_cls.remote()
        self._launch(run)
        self.on_event("restarted", {"number": number, "from_step": run.checkpoint_step})

    # --- main loop ---------------------------------------------------------------------------

    def run(self) -> SweepSummary:
        import ray

        self._resume_orphans()
        while True:
            while self._can_start():
                self._start_new()
            if not self.running:
                break
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
            self.on_event("tick", {})
            for stream in ready:
                run = self.running.pop(stream)
                try:
                    batch = ray.get(next(stream))
                except StopIteration:
                    continue
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                        ray.exceptions.WorkerCrashedError) as exc:
                    self._lost(run, exc)
                    continue
                over = False
                for event in batch:
                    over = self._handle(run, event) or over
                if not over:
                    self.running[stream] = run
        return self.summary()

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


def _reports_from_rows(rows: list[dict]) -> list[dict]:
    by_step: dict[int, dict] = {}
    for row in rows:
        report = by_step.setdefault(row["step"], {"step": row["step"], "metrics": {},
                                                  "time": row["time"].timestamp(),
                                                  "hyperparams": {}})
        report["metrics"][row["metric"]] = row["value"]
    return [by_step[s] for s in sorted(by_step)]
