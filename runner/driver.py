"""The driver: owns the Optuna study through ask/tell and keeps a pool of Ray workers busy.

Every decision about a trial is taken by its ``Lifecycle`` (runner/lifecycle.py); this module
turns Ray results and control requests into lifecycle events and carries out the actions they
answer with. Workers are long-lived actors that run trial after trial. The pool never holds an
idle actor while another actor waits to be placed, so a sweep cannot deadlock on its own
resources: trials beyond what the cluster fits wait in a queue.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState

import schedules
from runner import lifecycle as lc
from runner import study as study_lib
from runner.checkpoint import CheckpointError, read_metadata
from runner.config import ConfigError, SweepConfig
from runner.context import TrialTask, derive_seed
from runner.control import ControlChannel
from runner.lineage import ForkError, check_agrees, checkpoint_steps, fork_problems
from runner.records import RunRecords, history_rows, to_json
from runner.rundir import RunDir
from runner.space import realize
from runner.cooldown import CooldownFidelity
from runner.strategy import (DONE, WAIT, Exploit, Fork, NewTrial, Prune, Resume, Strategy,
                             SweepView, TrialView, strategy_class)
from runner.worker import task_payload

log = logging.getLogger("sweep")
TICK_SECONDS = 0.5  # the longest the loop waits for a worker before it looks at requests again
POLL_SECONDS = 1.0  # heartbeats, live.json and the scan for orphaned trials, at most this often
HEARTBEAT_SECONDS = 10.0
HEARTBEAT_STALE_SECONDS = 60.0  # a driver silent this long is gone: its trials are resumed
SAME_FAILURE_TRIALS = 3  # the first trials all failing alike stop the sweep (a typo, not bad luck)
STRATEGY_STATE_KEY = "strategy"  # the study system attr holding the strategy's state_dict
STUDY_VIEW_STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
                     TrialState.FAIL: "failed", TrialState.RUNNING: "running"}
STUDY_STATES = {lc.State.COMPLETE: TrialState.COMPLETE, lc.State.PRUNED: TrialState.PRUNED,
                lc.State.FAILED: TrialState.FAIL}


@dataclass(eq=False)
class Worker:
    """A pooled TrialWorker actor and where it runs (known once it has run a trial)."""

    actor: Any
    node_id: str = ""
    placed: bool = False


@dataclass(eq=False)
class Handle:
    """The driver's Ray-side view of one trial: its study trial, task, worker and event stream."""

    trial: optuna.Trial
    task: TrialTask
    started: float
    worker: Optional[Worker] = None
    stream: Any = None
    placement: Optional[dict] = None
    lineage: Optional[dict] = None  # a fork's parent: trial, step, checkpoint, digest, seed_trial
    point: Optional[dict] = None  # its sampled Optuna parameters
    stateless: bool = False  # its trainable declares no state: a pause could only start over


@dataclass
class SweepSummary:
    counts: dict[str, int]
    best: Optional[dict]
    run_dir: str
    paused: list[int]


class Sweep:
    """One sweep run: ``Sweep(config).run()``. Ray must already be initialised."""

    def __init__(self, config: SweepConfig, *, on_event: Optional[Callable[[str, dict], None]] = None,
                 max_concurrent: Optional[int] = None,
                 unpause: Optional[set[int]] = frozenset(),
                 on_claimed: Optional[Callable[[], None]] = None,
                 exit_at_once: bool = False, source: str = "<config>") -> None:
        self.config = config
        self.source = source  # the config's file, named by errors in it
        self.run_dir = config.run_dir()
        self.root = RunDir(self.run_dir)
        self.records = RunRecords(self.root)
        self.max_concurrent = max_concurrent or config.max_concurrent
        self.capacity = self.max_concurrent
        self.on_event = on_event or (lambda kind, info: None)
        self.study: optuna.Study  # opened by run(), once nothing refuses the run
        self.new_worker = study_lib.worker_factory(config)
        self.deadline = (time.monotonic() + config.search.timeout) if config.search.timeout else None
        self.objectives = [o.metric for o in config.objectives]
        self.rules = lc.Rules(objectives=tuple(self.objectives),  # decides: once run() opens
                              max_restarts=config.max_restarts, retries=config.retries)
        self.strategy: Strategy  # the strategy too
        self._strategy_state = ""  # its state as last saved (JSON)
        self.trials: dict[int, lc.Lifecycle] = {}
        self.handles: dict[int, Handle] = {}
        self.streams: dict[Any, int] = {}
        self.idle: list[Worker] = []
        self.stop_requested = False
        self.abort_reason: Optional[str] = None  # why the sweep stopped early, in one line
        self.abort_fix: Optional[str] = None  # the command that goes on after the fix
        self.metric_names_read: set[frozenset] = set()  # the report metric names checked
        self.strategy_failed = False
        self.held: set[int] = set()  # paused by the strategy (not by a user): it resumes them
        self.user_held: set[int] = set()  # held ones a user paused too: they wait for the user
        self.exhausted = False
        self.timed_out = False  # search.timeout has passed (said once)
        self.control = ControlChannel(self.run_dir)
        self.unpause = unpause  # paused trials to resume: None for all
        self.on_claimed = on_claimed  # runs once this process drives the run dir (saves config)
        self.exit_at_once = exit_at_once  # a second signal ends the process, not just the run
        self._local = True
        self.driver_id = uuid.uuid4().hex[:12]
        self.dead_drivers: set[str] = set()
        self.finished_order: list[lc.Lifecycle] = []
        self._stop_signalled = False
        self._last_heartbeat = float("-inf")
        self._last_poll = float("-inf")

    # --- the study side ----------------------------------------------------------------------

    def _task(self, trial: optuna.Trial, params: dict, specs: dict,
              lineage: Optional[dict] = None) -> TrialTask:
        """What a worker needs; a fork keeps its root ancestor's seed (the same data order) and
        names its parent's checkpoint in every checkpoint it writes."""
        budget = self.config.budget
        lineage = lineage or {}
        return TrialTask(
            number=trial.number, trainable=self.config.trainable, params=params,
            schedule_specs=specs, steps=lineage.get("steps", budget.steps),
            report_every=budget.report_every,
            checkpoint_every=budget.checkpoint_every,
            seed=derive_seed(self.config.seed, lineage.get("seed_trial", trial.number))
            if self.config.trial_seed is None else self.config.trial_seed,
            # nothing in the study names a path: a copied or moved run dir uses its own files
            checkpoint_root=self.root.uri_of(RunDir.checkpoint_dir(trial.number)),
            objective_metrics=self.objectives, wait_for_pruning=self.rules.decides,
            metadata={"sweep": self.config.name, **({"parent": lineage} if lineage else {})},
            store_options=self.config.store_options(),
            keep_steps=self.strategy.checkpoint_steps(trial.number, specs))

    def _start_new(self, new: NewTrial) -> None:
        """Ask the study for a trial and queue it; a point whose schedule is invalid fails alone."""
        with study_lib.ask_lock(self.study, self.run_dir):
            trials = self.study.get_trials(deepcopy=False)
            if new.limit is not None and \
                    sum("parent" not in t.user_attrs for t in trials) >= new.limit:
                self.exhausted = True  # forks come on top of n_trials: they were not sampled
                return
            if new.params:
                self.study.enqueue_trial(new.params, skip_if_exists=False)
            study_lib.reseed(self.study.sampler, self.config.search.seed, len(trials))
            trial = self.study.ask()
        study_lib.set_trial_system_attr(trial, "driver", self.driver_id)
        life = lc.Lifecycle(trial.number, self.rules)
        self.trials[trial.number] = life
        try:
            params, specs = realize(self.config.hyperparams, self.config.params, trial)
            specs = self.strategy.plan_schedules(specs)
        except (schedules.ScheduleError, ValueError) as exc:
            self.handles[trial.number] = Handle(trial, self._task(trial, {}, {}), time.time())
            self._apply(life, lc.Rejected(f"invalid schedule: {exc}"))
            return
        trial.set_user_attr("params", params)
        trial.set_user_attr("schedule_specs", specs)
        self.handles[trial.number] = Handle(trial, self._task(trial, params, specs), time.time(),
                                            point=dict(trial.params))
        self._write_live()  # steerable by number at once
        self.on_event("queued", {"number": trial.number, "specs": specs, "params": params})

    def _orphans(self) -> list[optuna.trial.FrozenTrial]:
        """RUNNING trials that no live driver runs: a stopped or dead driver's."""
        beats = study_lib.heartbeats(self.study)
        stale = time.time() - HEARTBEAT_STALE_SECONDS
        orphans = []
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number in self.trials:
                continue
            owner = frozen.system_attrs.get("driver")
            started = frozen.datetime_start.timestamp() if frozen.datetime_start else 0.0
            beat = beats.get(owner, {})
            # a trial just asked by another driver has no owner yet: its start time vouches for it
            last_sign = beat.get("time", 0.0) if owner else started
            if owner in self.dead_drivers or beat.get("stopped") or last_sign < stale:
                orphans.append(frozen)
        return orphans

    def _adopt(self, frozen: optuna.trial.FrozenTrial, paused: set[int]) -> None:
        """Take over a trial a previous driver left running; it continues from its checkpoint."""
        specs = frozen.user_attrs.get("schedule_specs")
        params = frozen.user_attrs.get("params")
        if specs is None or params is None:  # asked but never launched: nothing to resume
            self.study.tell(frozen.number, state=TrialState.FAIL)
            return
        if not {"parent", "exploits"} & set(frozen.user_attrs):
            # forks and exploited members follow no sampled schedule: their checkpoints vouch
            study_lib.check_unchanged(self.config, frozen, specs, self.strategy.plan_schedules)
        trial = optuna.Trial(self.study, frozen._trial_id)
        owner = frozen.system_attrs.get("driver")
        study_lib.set_trial_system_attr(trial, "driver", self.driver_id)
        life = lc.Lifecycle(frozen.number, self.rules)
        life.reports = _reports_from_rows(
            self.records.read_trial("history", frozen.number).to_pylist(),
            self.records.read_trial("applied", frozen.number).to_pylist())
        life.told_steps = set(frozen.intermediate_values)
        life.counts.update(frozen.user_attrs.get("counts", {}))
        life.restart_log = list(frozen.user_attrs.get("restart_log", []))
        # what it resumes from, unless that file turns out unreadable
        life.checkpoint_step = max(checkpoint_steps(self.root, frozen.number), default=0)
        life.node_id = frozen.user_attrs.get("node_id", "")
        stopped = study_lib.heartbeats(self.study).get(owner, {}).get("stopped")
        life.resumed_by_new_driver("sweep resumed" if stopped else "driver lost", time.time())
        held = frozen.system_attrs.get("held")
        if held:
            self.held.add(frozen.number)
            if frozen.number in paused:
                self.user_held.add(frozen.number)
        # a strategy's pause at a step whose checkpoint never landed is redone up to that step
        landed = bool(held) and (held is True or life.checkpoint_step >= held)
        if frozen.number in paused or landed:
            life.state = lc.State.PAUSED
        self.trials[frozen.number] = life
        started = frozen.datetime_start.timestamp() if frozen.datetime_start else time.time()
        lineage = frozen.user_attrs.get("parent")
        task = self._task(trial, params, specs, lineage)
        if "seed_trial" in frozen.user_attrs:  # an exploited member goes on with its donor's data
            task.seed = derive_seed(self.config.seed, frozen.user_attrs["seed_trial"])
        self.handles[frozen.number] = Handle(trial, task, started, lineage=lineage,
                                             point=dict(frozen.params))
        recorded = max(life.reports, default=-1)
        self._apply(life, lc.Recovered(_saved_reports(self.root, frozen.number, recorded)))
        self._save_attrs(life)
        branch = {"parent": lineage["trial"], "rung": lineage["rung"]} \
            if (lineage or {}).get("rung") is not None else {}
        self.on_event("adopted", {"number": frozen.number, "paused": frozen.number in paused,
                                  "params": params, "specs": specs, **branch})

    # --- carrying out a lifecycle's actions ----------------------------------------------------

    def _apply(self, life: lc.Lifecycle, event: lc.Event) -> None:
        for action in life.handle(event, time.time()):
            self._do(life, action)
        if life.finished and life not in self.finished_order:
            self.finished_order.append(life)
            self.held.discard(life.number)  # (failed while held: its pause never landed)
            self.user_held.discard(life.number)
            self._check_same_failure()
            self._ask_strategy("finished", self._view(life.number), default=None)

    def _do(self, life: lc.Lifecycle, action: lc.Action) -> None:
        handle = self.handles[life.number]
        if isinstance(action, lc.Launch):
            self._launch(handle, action.placement)
        elif isinstance(action, lc.Decide):
            if action.tell and self.strategy.tells_reports:
                handle.trial.report(action.value, action.step)
            if action.answer:
                metrics = life.reports[action.step]["metrics"]
                decision = self._ask_strategy("decide", self._view(life.number), action.step,
                                              metrics, default="continue")
                if decision not in ("continue", "prune", "pause"):
                    self._strategy_failed(f"decide() answered {decision!r}; expected "
                                          f"'continue', 'prune' or 'pause'")
                    decision = "continue"
                elif decision == "pause" and handle.stateless:
                    self._strategy_failed(f"it paused trial {life.number} at step {action.step}, "
                                          f"but the trainable {self.config.trainable} declares "
                                          f"no state (ctx.track / ctx.track_pytree) to go on "
                                          f"from; declare it to use it")
                    decision = "continue"
                # a pause is answered to the waiting report: it checkpoints at exactly this step
                handle.worker.actor.decide.remote(life.number, decision)
                if decision == "pause" and life.pausing:  # a user's pause came first
                    self._hold(life.number, True, action.step)
                    self.user_held.add(life.number)
                    self._save_paused()
                elif decision == "pause":
                    self._hold(life.number, True, action.step)
                    self._apply(life, lc.Control("pause", worker_told=True))
        elif isinstance(action, lc.AnswerWorker):
            if handle.worker is not None:
                handle.worker.actor.decide.remote(life.number,
                                                  "prune" if action.prune else "continue")
        elif isinstance(action, lc.Interrupt):
            handle.worker.actor.interrupt.remote(life.number, action.reason)
        elif isinstance(action, lc.Tell):
            if action.state == lc.State.FAILED:
                handle.trial.set_user_attr("error", life.error)
                handle.trial.set_user_attr("traceback", life.traceback[-8000:])
            values = action.values
            self.study.tell(handle.trial, (values if len(values) > 1 else values[0]) if values
                            else None, state=None if values else STUDY_STATES[action.state])
        elif isinstance(action, lc.SaveAttrs):
            self._save_attrs(life)
        elif isinstance(action, lc.WriteHistory):
            self._write_history(life)
        elif isinstance(action, lc.WriteTrial):
            self._write_trial(life, handle)
        elif isinstance(action, lc.ReleaseWorker):
            worker, handle.worker = handle.worker, None
            self._forget_stream(handle)
            if worker is not None:
                self._release(worker)
        elif isinstance(action, lc.KillWorker):
            worker, handle.worker = handle.worker, None
            self._forget_stream(handle)
            if worker is not None:
                _kill(worker)
        elif isinstance(action, lc.ForgetWorker):
            handle.worker = None
            self._forget_stream(handle)
        elif isinstance(action, lc.Emit):
            by_strategy = {"by_strategy": True} if life.number in self.held else {}
            self.on_event(action.kind, {"number": life.number, **action.info, **by_strategy})

    def _forget_stream(self, handle: Handle) -> None:
        if handle.stream is not None:
            self.streams.pop(handle.stream, None)
            handle.stream = None

    def _save_attrs(self, life: lc.Lifecycle) -> None:
        trial = self.handles[life.number].trial
        trial.set_user_attr("restarts", life.restarts)
        trial.set_user_attr("counts", life.counts)
        trial.set_user_attr("restart_log", life.restart_log)
        trial.set_user_attr("checkpoint_step", life.checkpoint_step)
        trial.set_user_attr("node_id", life.node_id)

    def _write_history(self, life: lc.Lifecycle) -> None:
        metrics, applied = history_rows(life.number, life.reports.values())
        self.records.write("history", life.number, metrics)
        self.records.write("applied", life.number, applied)

    def _write_trial(self, life: lc.Lifecycle, handle: Handle) -> None:
        values = [life.values[m] for m in self.objectives] if life.values else None
        checkpoint = ""
        if life.state == lc.State.COMPLETE and life.checkpoint:
            checkpoint = self.root.relative(life.checkpoint)
        row = {
            "number": life.number, "state": life.state.name if life.state != lc.State.FAILED
            else "FAIL", "value": values[0] if values else None, "values": values,
            "params": to_json(handle.task.params), "schedules": to_json(handle.task.schedule_specs),
            "node": life.node, "started": datetime.fromtimestamp(handle.started, tz=timezone.utc),
            "ended": datetime.now(tz=timezone.utc), "restarts": life.restarts,
            "restart_log": to_json(life.restart_log), "last_step": life.step,
            "error": life.error or None, "lost": life.counts["lost"],
            "retries": life.counts["retries"], "interruptions": life.counts["interruptions"],
            "checkpoint": checkpoint or None,
            "parent": (handle.lineage or {}).get("trial"),
            "parent_step": (handle.lineage or {}).get("step"),
            "rung": (handle.lineage or {}).get("rung"),
        }
        self.records.write("trials", life.number, [row])
        if row["rung"] is not None:
            self._write_branch(row, handle.lineage["trial"])

    def _write_branch(self, row: dict, trunk: int) -> None:
        """A finished cooldown branch's row in its trunk's ``branches`` table (before the study
        is told, as its trials row: a driver killed in between finishes the branch again)."""
        metrics = self.trials[row["number"]].reports.get(row["rung"], {}).get("metrics", {})
        branch = {"trial": trunk, "rung": row["rung"], "branch": row["number"],
                  "from_step": row["parent_step"], "to_step": row["rung"], "state": row["state"],
                  "value": row["value"], "metrics": to_json(metrics),
                  "checkpoint": row["checkpoint"]}
        rows = [r for r in self.records.read_trial("branches", trunk).to_pylist()
                if r["rung"] != row["rung"]]
        self.records.write("branches", trunk, sorted([*rows, branch], key=lambda r: r["rung"]))

    def _check_same_failure(self) -> None:
        """Stop when the first trials all failed with one error: every other would too."""
        first = self.finished_order[:SAME_FAILURE_TRIALS]
        n_trials = self.config.search.n_trials
        if ((n_trials is not None and n_trials <= SAME_FAILURE_TRIALS) or self.abort_reason
                or len(first) < SAME_FAILURE_TRIALS):
            return
        errors = {life.error for life in first if life.state == lc.State.FAILED}
        if len(errors) == 1 and all(life.state == lc.State.FAILED for life in first):
            error = errors.pop()
            self.abort_reason = f"the first trials all failed with: {error}"
            self.on_event("aborting", {"error": error, "trials": len(first)})
            self.stop()

    def _check_objective_named(self, number: int, metrics: dict) -> None:
        """A report without an objective metric but with one named close to it: a typo in the
        config, stopped at the first report rather than after the whole budget."""
        names = frozenset(metrics)  # every report passes here: each set of names is read once
        if self.abort_reason or names in self.metric_names_read:
            return
        self.metric_names_read.add(names)
        for name in self.objectives:
            close = [] if name in names else difflib.get_close_matches(name, names, n=1,
                                                                       cutoff=0.75)
            if close:
                self.abort_reason = (f"{self.source}: objective: metric {name!r} is not among "
                                     f"the metrics trial {number} reports "
                                     f"({', '.join(sorted(metrics))}); did you mean {close[0]!r}?")
                # the fixed file is the one to run: resuming re-reads the run dir's own copy
                self.abort_fix = f"sweep run {self.source}"
                self.on_event("notice", {"message": self.abort_reason})
                self.stop()
                return

    def _check_report_usable(self, number: int, step: int, metrics: dict) -> None:
        """A report the strategy cannot use (the objective missing where it scores): the sweep
        stops at once, resumable, rather than going on with trials it cannot rank."""
        problem = None if self.abort_reason else \
            self._ask_strategy("report_problem", number, step, metrics, default=None, save=False)
        if problem:
            self.abort_reason = f"{self.source}: {problem}"
            self.on_event("notice", {"message": self.abort_reason})
            self.stop()

    # --- the strategy ------------------------------------------------------------------------

    def _open_strategy(self) -> Strategy:
        """The configured strategy, continuing from the state a previous driver saved."""
        name = self.config.search.strategy
        saved = study_lib.study_system_attrs(self.study).get(STRATEGY_STATE_KEY)
        step = "__init__()"
        try:
            cls = CooldownFidelity if self.config.fidelity.kind == "cooldown" else \
                strategy_class(name)
            strategy = cls(self.config, self.study)
            if saved and saved.get("strategy") == name:
                step = "load_state_dict()"
                strategy.load_state_dict(saved["state"])
            step = "state_dict()"
            self._strategy_state = json.dumps(strategy.state_dict(), sort_keys=True)
        except Exception as exc:  # user code, before anything runs: one line, nothing started
            raise ConfigError(f"{self.source}: search.strategy: {name}: {step} raised "
                              f"{type(exc).__name__}: {exc}") from None
        return strategy

    def _ask_strategy(self, method: str, *args: Any, default: Any, save: bool = True) -> Any:
        """Call the strategy and (unless ``save`` is False: the caller saves once the answer is
        carried out) save its state if the call changed it. A strategy that raises stops the
        sweep (resumable) with one line; its traceback goes to strategy_error.txt."""
        if self.strategy_failed:
            return default
        try:
            answer = getattr(self.strategy, method)(*args)
            if save:
                self._save_strategy()
        except Exception as exc:  # user code: the sweep must stop cleanly, not crash
            import traceback

            self._strategy_failed(f"{method}() raised {type(exc).__name__}: {exc}",
                                  traceback.format_exc())
            return default
        return answer

    def _save_strategy(self) -> None:
        """The strategy's state into the study, if it changed (a refused answer is not saved:
        after the fix, the resumed strategy asks again)."""
        state = json.dumps(self.strategy.state_dict(), sort_keys=True)
        if state != self._strategy_state:
            self._strategy_state = state
            study_lib.set_study_system_attr(self.study, STRATEGY_STATE_KEY, {
                "strategy": self.config.search.strategy, "state": json.loads(state)})

    def _strategy_failed(self, problem: str, details: str = "") -> None:
        self.strategy_failed = True  # never asked again in this run
        if self.abort_reason:
            return
        who = "fidelity.kind cooldown" if self.config.fidelity.kind == "cooldown" else \
            f"search.strategy {self.config.search.strategy}"  # what the user chose
        self.abort_reason = f"{who}: {problem}"
        if details:
            self.root.write_text("strategy_error.txt", details)
            self.abort_reason += f" (details in {os.path.join(self.run_dir, 'strategy_error.txt')})"
        self.on_event("notice", {"message": self.abort_reason})
        self.stop()

    def _view(self, number: int) -> TrialView:
        life, handle = self.trials[number], self.handles[number]
        # a user's pause is the user's: a strategy resumes only what it paused
        state = "user_paused" if life.state == lc.State.PAUSED and number not in self.held \
            else life.state.value
        return TrialView(number=number, state=state, params=handle.task.params,
                         schedules=handle.task.schedule_specs, values=dict(life.values or {}),
                         step=life.step, checkpoint_step=life.checkpoint_step,
                         parent=handle.lineage, point=handle.point or {})

    def _release_held(self) -> None:
        """The strategy ended with trials it paused: they become paused trials a user resumes
        (``sweep resume RUN_DIR N``), said once each, instead of held for good."""
        for number in sorted(self.held):
            self._hold(number, False)
            self.on_event("notice", {"message": f"trial {number}: paused by the strategy, which "
                                                f"has ended; it stays paused (sweep resume "
                                                f"{self.run_dir} {number})"})
        self._save_paused()

    def _hold(self, number: int, held: bool, step: Optional[int] = None) -> None:
        """A trial the strategy paused (at ``step``) stays paused, also for a resumed driver,
        until it resumes it (``sweep resume`` leaves it to the strategy)."""
        if not held:
            self.user_held.discard(number)
        if held != (number in self.held):
            (self.held.add if held else self.held.discard)(number)
            study_lib.set_trial_system_attr(self.handles[number].trial, "held",
                                            step if held and step else held)

    def _exploit(self, exploit: Exploit) -> bool:
        """A paused member goes on from its donor's checkpoint with the explored schedules: the
        checkpoint is copied over the member's own at that step, then the study records it."""
        member, donor, step = exploit.trial, exploit.donor, exploit.step
        life = self.trials.get(member)
        views = self._all_views()
        source = RunDir.checkpoint_file(donor, step)
        problem = ""
        if life is None or life.state != lc.State.PAUSED or life.checkpoint_step != step:
            problem = f"trial {member} is not paused at step {step}"
        elif donor not in views or not self.root.exists(source):
            problem = f"trial {donor} has no checkpoint at step {step}"
        if not problem:
            try:
                specs = check_agrees(donor, views[donor].schedules, exploit.specs, step)
            except ForkError as exc:
                problem = f"trial {donor}: {exc}"
        if problem:
            self._strategy_failed(f"next() answered an exploit of {problem}")
            return False
        # Each write below may be the last before a kill -9. The member's schedules go last:
        # until they are the planned ones, the next driver's strategy asks for this exploit
        # again, and it is redone (its half-written record replaced).
        handle, old = self.handles[member], self.handles[member].task.schedule_specs
        self.root.copy(source, RunDir.checkpoint_file(member, step))
        donor_attrs = self._frozen(donor).user_attrs
        seed_trial = donor_attrs.get("seed_trial", (views[donor].parent or {}).get("seed_trial",
                                                                                  donor))
        row = {"member": member, "generation": exploit.generation, "step": step, "donor": donor,
               "donor_step": step, "old": to_json(old), "new": to_json(specs)}
        exploits = [*(r for r in handle.trial.user_attrs.get("exploits", [])
                      if r["step"] < step), row]
        handle.trial.set_user_attr("exploits", exploits)
        self.records.write("lineage", member, exploits)
        handle.task.schedule_specs, handle.task.params = specs, dict(views[donor].params)
        handle.task.seed = derive_seed(self.config.seed, seed_trial)
        handle.trial.set_user_attr("seed_trial", seed_trial)
        handle.trial.set_user_attr("params", handle.task.params)
        handle.trial.set_user_attr("schedule_specs", specs)
        self.on_event("exploited", {"number": member, "donor": donor, "step": step})
        return True

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        if number in self.handles:
            return self.study._storage.get_trial(self.handles[number].trial._trial_id)
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)

    def _all_views(self) -> dict[int, TrialView]:
        """Every trial of the study: ours as their lifecycles stand, others as the study has them."""
        views = {}
        for frozen in self.study.get_trials(deepcopy=False):
            if frozen.number in self.trials:
                views[frozen.number] = self._view(frozen.number)
                continue
            attrs = frozen.user_attrs
            values = dict(zip(self.objectives, frozen.values or ()))
            views[frozen.number] = TrialView(
                number=frozen.number, state=STUDY_VIEW_STATES.get(frozen.state, "running"),
                params=attrs.get("params", {}), schedules=attrs.get("schedule_specs", {}),
                values=values, step=max(frozen.intermediate_values, default=0),
                checkpoint_step=attrs.get("checkpoint_step", 0), parent=attrs.get("parent"),
                point=dict(frozen.params))
        return views

    def _next(self) -> bool:
        """Carry out what the strategy starts next; False when it starts nothing now."""
        view = SweepView(trials=self._all_views, free_slots=self.capacity - self._on_worker(),
                         checkpoints=lambda n: checkpoint_steps(self.root, n))
        answer = self._ask_strategy("next", view, default=DONE, save=False)
        started = self._carry_out(answer)
        if not self.strategy_failed:
            try:
                self._save_strategy()
            except Exception as exc:  # a state_dict that is not JSON data
                self._strategy_failed(f"state_dict() raised {type(exc).__name__}: {exc}")
        return started

    def _carry_out(self, answer: Any) -> bool:
        """What ``next`` answered; False when it starts nothing now."""
        if isinstance(answer, NewTrial):
            self._start_new(answer)
        elif isinstance(answer, Fork):
            self._fork(answer.parent, answer.step, answer.specs, answer.steps, checked=False,
                       rung=answer.rung)
        elif isinstance(answer, Exploit):
            return self._exploit(answer)
        elif isinstance(answer, Resume) and answer.trial in self.user_held:
            self._hold(answer.trial, False)  # the user's pause now holds it alone
            self._save_paused()
            self.on_event("notice", {"message": f"trial {answer.trial}: the strategy resumes it, "
                                                f"but it was paused by request: it stays paused "
                                                f"(sweep resume {self.run_dir} {answer.trial})"})
        elif isinstance(answer, Resume) and answer.trial in self.held and \
                self.trials[answer.trial].state in (lc.State.PAUSED, lc.State.STOPPED):
            self._apply(self.trials[answer.trial], lc.Control("resume"))  # said while held
            self._hold(answer.trial, False)
            self._save_paused()
        elif isinstance(answer, Prune) and answer.trial in self.held and \
                self.trials[answer.trial].state in (lc.State.PAUSED, lc.State.STOPPED):
            self._hold(answer.trial, False)
            self._save_paused()
            self._apply(self.trials[answer.trial], lc.Control("prune"))
        elif answer == WAIT and (self._on_worker() or self._wants_worker()):
            return False
        elif answer in (WAIT, DONE):
            # waiting with nothing running would wait forever: this run ends here
            self.exhausted = True
            asked = sorted(n for n, life in self.trials.items()
                           if life.state == lc.State.PAUSED and n not in self.held)
            if answer == WAIT and asked:  # it waits for them: it goes on later
                self.on_event("notice", {"message": f"search.strategy "
                                                    f"{self.config.search.strategy} waits for "
                                                    f"paused trial{'s' * (len(asked) > 1)} "
                                                    f"{', '.join(map(str, asked))}; the sweep "
                                                    f"stops here (sweep resume {self.run_dir} "
                                                    f"continues it)"})
            else:
                self._release_held()
            return False
        else:
            self._strategy_failed(f"next() answered {answer!r}; expected NewTrial, Fork, Exploit, "
                                  f"Resume or Prune (of a trial it paused), WAIT or DONE")
            return False
        return True

    # --- the worker pool -----------------------------------------------------------------------

    def _launch(self, handle: Handle, placement: Optional[dict]) -> None:
        handle.placement = placement
        handle.task.restarted = bool(self.trials[handle.task.number].restart_log)
        handle.worker = self._acquire(placement)
        handle.stream = handle.worker.actor.run.remote(task_payload(handle.task))
        self.streams[handle.stream] = handle.task.number

    def _acquire(self, placement: Optional[dict]) -> Worker:
        """An idle worker that suits the placement, else a fresh actor (idle ones released first,
        so the new actor never waits for resources an idle actor holds)."""
        for worker in reversed(self.idle):
            if _suits(worker, placement):
                self.idle.remove(worker)
                return worker
        while self.idle:
            _kill(self.idle.pop())
        return Worker(self.new_worker(study_lib.affinity(placement, self.config.resources)))

    def _release(self, worker: Worker) -> None:
        """A worker is free. An actor still waiting to be placed may need what it holds: then it
        takes over that actor's trial (or, if it cannot, it goes). Otherwise it joins the pool."""
        waiting = [h for h in self.handles.values() if h.worker is not None and not h.worker.placed]
        actors = sum(h.worker is not None for h in self.handles.values()) + len(self.idle) + 1
        crowded = actors > self.capacity  # more actors than the cluster holds: one must wait
        for handle in waiting:
            pinned_here = bool(handle.placement) and _suits(worker, handle.placement)
            if pinned_here or (crowded and _suits(worker, handle.placement)):
                pending = handle.worker
                self._forget_stream(handle)
                _kill(pending)
                handle.worker = worker
                handle.stream = worker.actor.run.remote(task_payload(handle.task))
                self.streams[handle.stream] = handle.task.number
                return
        if waiting and (crowded or any(h.placement for h in waiting)):
            _kill(worker)
            return
        self.idle.append(worker)

    def _release_unneeded(self) -> None:
        """Idle actors go when no trial will want them (the sweep winds down)."""
        if self.idle and not self._wants_worker() and not self._can_start_new():
            while self.idle:
                _kill(self.idle.pop())

    def _wants_worker(self) -> bool:
        return any(life.state in lc.WANTS_WORKER for life in self.trials.values())

    def _on_worker(self) -> int:
        return sum(life.state in lc.ON_WORKER for life in self.trials.values())

    def _can_start_new(self) -> bool:
        if self.stop_requested or self.exhausted:
            return False
        return self.deadline is None or time.monotonic() < self.deadline

    def _schedule(self) -> None:
        """Fill free slots: queued trials first (oldest number first), then new ones."""
        while not self.stop_requested and self._on_worker() < self.capacity:
            queued = sorted(n for n, life in self.trials.items() if life.state in lc.WANTS_WORKER)
            if queued:
                self._apply(self.trials[queued[0]], lc.Assigned())
                continue
            if not self._can_start_new() or not self._next():
                break
        self._release_unneeded()

    def _update_capacity(self) -> None:
        fits, notice = study_lib.capacity(self.config.resources, self.max_concurrent,
                                          self._local)
        if notice and fits != self.capacity:
            self.on_event("notice", {"message": notice})
        self.capacity = fits

    # --- control requests -------------------------------------------------------------------

    def _take_request(self, request: dict) -> None:
        number, action = int(request["trial"]), request["action"]
        if action == "fork":
            self._fork(number, int(request["at"]), request["specs"], request.get("steps"),
                       checked=True)
            return
        life = self.trials.get(number)
        if life is None:
            self.on_event("notice", {"message": f"trial {number}: not run by this sweep; "
                                                f"{action} ignored"})
            return
        if action in ("pause", "resume") and number in self.held:
            self._user_holds(number, action == "pause")
            return
        placement = None
        if action == "migrate":
            placement, problem = self._migration_target(life, request.get("to"))
            if problem:
                self.on_event("notice", {"message": f"trial {number}: {problem}"})
                return
        self._apply(life, lc.Control(action, placement))
        self._save_paused()

    def _user_holds(self, number: int, paused: bool) -> None:
        """A user's pause of a trial the strategy holds: it stays paused when the strategy
        resumes it, until the user resumes it (then the strategy's hold stands alone again)."""
        strategy = f"search.strategy {self.config.search.strategy}"
        if paused == (number in self.user_held):
            message = (f"trial {number} is already paused" if paused else
                       f"trial {number}: paused by {strategy}, which resumes it; resume ignored")
        elif paused:
            self.user_held.add(number)
            message = (f"trial {number}: paused by {strategy}; it now also waits for "
                       f"sweep resume {self.run_dir} {number}")
        else:
            self.user_held.discard(number)
            message = f"trial {number}: {strategy} resumes it when it is due"
        self._save_paused()
        self.on_event("notice", {"message": message})

    def _fork(self, parent: int, step: int, specs: dict, steps: Optional[int],
              checked: bool, rung: Optional[int] = None) -> None:
        """A new trial (beyond n_trials) that continues trial ``parent`` from its checkpoint at
        ``step`` with ``specs`` (``checked`` by ``sweep fork`` to agree with the parent's before
        it; a strategy's forks are checked here).

        The checkpoint is copied into the child's own directory first: the parent's retention
        can then never take away what the child starts from."""
        source = RunDir.checkpoint_file(parent, step)
        frozen = next((t for t in self.study.get_trials(deepcopy=False) if t.number == parent), None)
        if frozen is None or not self.root.exists(source):
            problem = f"trial {parent}: no checkpoint at step {step}"
            if checked:
                self.on_event("notice", {"message": f"{problem} any more; fork ignored"})
            else:
                self._strategy_failed(f"next() forked {problem}")
            return
        if not checked:
            try:
                fork_problems(step, steps or self.config.budget.steps)
                specs = check_agrees(parent, frozen.user_attrs["schedule_specs"], specs, step)
            except ForkError as exc:
                self._strategy_failed(f"next() forked trial {parent}: {exc}")
                return
        with study_lib.ask_lock(self.study, self.run_dir):
            trial = self.study.ask()
        study_lib.set_trial_system_attr(trial, "driver", self.driver_id)
        parent_lineage = frozen.user_attrs.get("parent") or {}
        lineage = {"trial": parent, "step": step, "checkpoint": source,
                   "digest": self.root.checkpoint_digest(source),
                   "seed_trial": parent_lineage.get("seed_trial", parent)}
        if steps is not None or "steps" in parent_lineage:  # an extension, or a fork of one
            lineage["steps"] = int(steps if steps is not None else parent_lineage["steps"])
        if rung is not None:  # a cooldown branch: hidden from the sampler (study.without_branches)
            lineage["rung"] = int(rung)
            study_lib.set_trial_system_attr(trial, study_lib.BRANCH, True)
        params = frozen.user_attrs["params"]
        target = RunDir.checkpoint_file(trial.number, step)
        self.root.copy(source, target)
        trial.set_user_attr("params", params)
        trial.set_user_attr("schedule_specs", specs)
        trial.set_user_attr("parent", lineage)
        # its first checkpoint is the copy of its parent's: a lost worker resumes from there
        self.trials[trial.number] = lc.Lifecycle(trial.number, self.rules, checkpoint_step=step)
        self.handles[trial.number] = Handle(trial, self._task(trial, params, specs, lineage),
                                            time.time(), lineage=lineage)
        self._write_live()
        self.on_event("forked", {"number": trial.number, "parent": parent, "step": step,
                                 **({"rung": rung} if rung is not None else {})})

    def _migration_target(self, life: lc.Lifecycle, to: Optional[str]) -> tuple[Optional[dict], str]:
        try:
            if to:
                node = study_lib.resolve_node(to)
                if node == life.node_id and life.state in lc.ON_WORKER:
                    return None, f"already on node {to}; it goes on where it is"
                return {"node": node, "soft": False}, ""
        except study_lib.ResumeError as exc:
            return None, f"{exc}; it goes on where it is"
        other = study_lib.other_node(life.node_id, self.config.resources)
        if other is None:
            stays = ("it goes on where it is" if life.state in lc.ON_WORKER
                     else f"it stays {life.state.value}")
            return None, f"no other node can take it; {stays}"
        return other, ""

    def _save_paused(self) -> None:
        """paused.json: ours as they stand, and the paused trials this driver has not taken up."""
        ours = self.user_held | {n for n, life in self.trials.items()
                                 if life.state == lc.State.PAUSED and n not in self.held}
        self.control.set_paused(ours | (self.control.paused() - set(self.trials)))

    def _poll(self, force: bool = False) -> None:
        """Requests every tick; heartbeat, live status, capacity and orphans about once a second."""
        if self._stop_signalled and not self.stop_requested:
            self.stop()
        for request in self.control.take():
            self._take_request(request)
        now = time.monotonic()
        if not force and now - self._last_poll < POLL_SECONDS:
            return
        self._last_poll = now
        if self.deadline is not None and now >= self.deadline and not self.timed_out:
            self.timed_out = True
            self.on_event("notice", {"message": f"search.timeout ({self.config.search.timeout:g} "
                                                f"s) reached: nothing starts or resumes from now "
                                                f"on; running trials go on until they finish or "
                                                f"pause (sweep resume {self.run_dir} continues "
                                                f"the sweep)"})
        if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._beat()
        self._update_capacity()
        if not self.stop_requested:
            paused = self.control.paused()
            for frozen in self._orphans():
                self._adopt(frozen, paused)
        self._write_live()

    def _write_live(self) -> None:
        rows = [{"number": n, "state": life.state.value, "step": life.step, "node": life.node,
                 "restarts": life.restarts,
                 "held": n in self.held - self.user_held,
                 **_lineage_fields(getattr(self.handles.get(n), "lineage", None))}
                for n, life in sorted(self.trials.items()) if not life.finished]
        self.control.write_live({"driver": self.driver_id, "pid": os.getpid(),
                                 "host": socket.gethostname(), "updated": time.time(),
                                 "trials": rows})

    # --- main loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Checkpoint every running trial at its next step and stop; the sweep stays resumable."""
        self.stop_requested = True
        for life in list(self.trials.values()):
            self._apply(life, lc.Control("stop"))

    def run(self) -> SweepSummary:
        self._local = _local_cluster()
        previous_driver = self.control.dead_driver()
        if previous_driver:
            self.dead_drivers.add(previous_driver)
        if self.control.driver_alive():
            raise study_lib.ResumeError(f"{self.run_dir}: another sweep process drives this run "
                                        f"dir; use sweep pause/resume/migrate to steer it")
        study_lib.check_storage_reachable(self.config)
        fits, notice = study_lib.capacity(self.config.resources, self.max_concurrent, self._local)
        if fits == 0 and self._local:
            raise study_lib.ResumeError(f"{self.source}: {notice}")
        fresh = not self.root.is_dir()
        self.study = study_lib.open_study(self.config)
        study_lib.keep_config(self.study, self.config, self.run_dir)
        try:
            self.strategy = self._open_strategy()
        except ConfigError:
            if fresh:  # nothing half-written: the study this call created goes too
                study_lib.delete_study(self.config)
                self.root.delete_tree()
            raise
        self.rules = dataclasses.replace(self.rules, decides=self.strategy.decides_at_reports)
        self.control.claim_driver(self.driver_id)
        if self.on_claimed is not None:
            self.on_claimed()
        released: set[int] = set()
        if self.unpause is None or self.unpause:  # sweep resume: only now that the run is ours
            paused = self.control.paused()
            released = paused if self.unpause is None else paused & self.unpause
            self.control.set_paused(paused - released)
        study_lib.name_metrics(self.study, self.objectives)
        self._beat()
        previous = self._install_signal_handlers()
        try:
            self.capacity = fits
            if notice:
                self.on_event("notice", {"message": notice})
            if self.unpause is None and released:  # said: a pause may have been meant to stay
                self.on_event("notice", {"message": f"resuming paused trial"
                                                    f"{'s' * (len(released) > 1)} "
                                                    f"{', '.join(map(str, sorted(released)))} "
                                                    f"(sweep resume RUN_DIR TRIAL resumes one "
                                                    f"alone)"})
            paused = self.control.paused()
            for frozen in self._orphans():  # before requests left for a stopped sweep
                self._adopt(frozen, paused)
            self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.idle:
                _kill(worker)
            self.idle.clear()
            study_lib.heartbeat(self.study, self.driver_id, stopped=True)
            self._save_paused()
            self.control.clear_live()
            self.control.release_driver()
        return self.summary()

    def _beat(self) -> None:
        self._last_heartbeat = time.monotonic()
        study_lib.heartbeat(self.study, self.driver_id)

    def _install_signal_handlers(self) -> dict:
        """First Ctrl-C or SIGTERM: checkpoint and stop cleanly. Second: stop at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum, frame):
            if self._stop_signalled and self.exit_at_once:
                # the CLI's second Ctrl-C: no half-run cleanup that could block; the trials'
                # checkpoints stand and the next driver resumes them ("driver lost")
                print(f"sweep: stopped at once; continue with: sweep resume {self.run_dir}",
                      file=sys.stderr, flush=True)
                os._exit(130)
            if self._stop_signalled:
                raise KeyboardInterrupt
            self._stop_signalled = True  # the loop stops the trials at its next tick
            running = self._on_worker()
            self.on_event("stopping", {"running": f"{running} running trial"
                                                  f"{'' if running == 1 else 's'}"})

        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _loop(self) -> None:
        import ray

        while True:
            self._poll()
            self._schedule()
            if not self.streams:
                if self._over():
                    self._poll(force=True)  # a resume request or an orphan may be waiting
                    self._schedule()
                    if self._over():
                        break
                else:  # queued trials wait for the cluster to grow (an autoscaler)
                    time.sleep(TICK_SECONDS)
                continue
            ready, _ = ray.wait(list(self.streams), num_returns=1, timeout=TICK_SECONDS)
            self.on_event("tick", {})
            for stream in ready:
                self._receive(stream)

    def _over(self) -> bool:
        """Nothing runs, nothing waits for a worker, and no new trial may start."""
        waiting = self._wants_worker() and not self.stop_requested
        return not self._on_worker() and not waiting and not self._can_start_new()

    def _receive(self, stream: Any) -> None:
        import ray

        number = self.streams.get(stream)
        if number is None:  # its worker was let go meanwhile
            return
        life = self.trials[number]
        try:
            batch = ray.get(next(stream))
        except StopIteration:
            self.streams.pop(stream, None)
            return
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                ray.exceptions.WorkerCrashedError) as exc:
            self.streams.pop(stream, None)
            self.handles[number].stream = None
            pause = life.pause_step
            if pause is not None and life.checkpoint_step < pause and \
                    self.root.exists(RunDir.checkpoint_file(number, pause)):
                # its pause's checkpoint landed (an atomic rename) before it could say so
                self._apply(life, lc.CheckpointDurable(
                    pause, self.root.uri_of(RunDir.checkpoint_file(number, pause))))
            self._apply(life, lc.WorkerLost(type(exc).__name__))
            return
        handle = self.handles[number]
        for raw in batch:
            if handle.stream is not stream:
                break  # an earlier event in the batch let the worker go
            if raw["type"] == "placed":
                handle.worker.placed, handle.worker.node_id = True, raw.get("node_id", "")
            elif raw["type"] == "started":
                handle.stateless = bool(raw.get("stateless"))
            elif raw["type"] == "report":
                self._check_objective_named(number, raw["metrics"])
                self._check_report_usable(number, raw["step"], raw["metrics"])
            self._apply(life, _event(raw))

    def summary(self) -> SweepSummary:
        trials = self.study.get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        best = None
        completed = [t for t in trials if t.state == TrialState.COMPLETE
                     and study_lib.BRANCH not in t.system_attrs]
        if completed and len(self.objectives) == 1:
            minimize = self.config.objectives[0].direction == "minimize"
            t = (min if minimize else max)(completed, key=lambda t: t.value)
            best = {"number": t.number, "value": t.value,
                    "schedules": t.user_attrs.get("schedule_specs"),
                    "params": t.user_attrs.get("params")}
        return SweepSummary(counts=counts, best=best, run_dir=self.run_dir,
                            paused=sorted(self.control.paused() | self.held))


def _event(raw: dict) -> lc.Event:
    """A worker's event (plain data over Ray) as a lifecycle event."""
    kind = raw["type"]
    if kind == "placed":
        return lc.Placed(raw.get("ip", ""), raw.get("node_id", ""),
                         {"pid": raw.get("pid"), "accelerators": raw.get("accelerators", {})})
    if kind == "started":
        return lc.Started(raw["step"], tuple(raw.get("replay", ())), raw.get("notice", ""))
    if kind == "report":
        return lc.Report(raw["step"], raw["metrics"], raw.get("hyperparams", {}), raw["time"],
                         bool(raw.get("awaits")))
    if kind == "checkpoint":
        return lc.CheckpointDurable(raw["step"], raw.get("uri", ""))
    if kind == "done":
        return lc.Done(raw["values"], raw.get("checkpoint", ""))
    if kind == "pruned":
        return lc.Pruned(raw.get("reason", ""))
    if kind == "failed":
        return lc.Raised(raw["error"], raw.get("traceback", ""))
    if kind == "interrupted":
        return lc.Interrupted(raw["reason"])
    if kind == "superseded":
        return lc.Superseded(raw["reason"])
    raise ValueError(f"unknown worker event {kind!r}")


def _suits(worker: Worker, placement: Optional[dict]) -> bool:
    if not placement:
        return True
    if "avoid" in placement:
        return worker.node_id != placement["avoid"]
    return worker.node_id == placement["node"]


def _kill(worker: Worker) -> None:
    import ray

    ray.kill(worker.actor, no_restart=True)


def _local_cluster() -> bool:
    """Whether every node of the cluster is on this host (then nothing will add resources)."""
    import ray

    here = ray.util.get_node_ip_address()
    return {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")} <= {here}


def _saved_reports(run: RunDir, number: int, recorded: int) -> tuple:
    """The reports saved with trial ``number``'s own checkpoints after step ``recorded`` (the
    last its history holds), oldest first: each checkpoint holds those since the one before."""
    found: list = []
    for step in reversed(checkpoint_steps(run, number)):
        if step <= recorded:
            break
        try:
            metadata = read_metadata(run.uri_of(RunDir.checkpoint_file(number, step)))
        except (CheckpointError, FileNotFoundError):
            continue  # torn or pruned: the worker resumes from an older one and redoes them
        if metadata.get("trial") != number:
            break  # a copy of a parent's or donor's checkpoint: its reports are theirs
        found = list(metadata.get("reports") or []) + found
    return tuple(found)


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



def _lineage_fields(lineage: Optional[dict]) -> dict:
    """A live trial's parent, as ``sweep status`` shows it: a branch's rung, a fork's step."""
    lineage = lineage or {}
    return {"parent": lineage.get("trial"), "parent_step": lineage.get("step"),
            "rung": lineage.get("rung")}
