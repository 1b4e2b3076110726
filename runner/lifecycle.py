"""One trial's lifecycle as a small state machine: events in, actions out; no Ray, no I/O.

The driver turns Ray results and control requests into events, feeds them to the trial's
``Lifecycle`` and carries out the actions it answers with (launch a worker, ask the pruner, tell
the study, write records, release or kill a worker). Every decision about a trial is taken here,
so it can be tested by driving event sequences without a cluster.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Optional, Union


class State(str, enum.Enum):
    QUEUED = "queued"              # waits for a worker (new, resumed, retried, handed over)
    RUNNING = "running"            # a worker runs it (its actor may not be placed yet)
    HANDING_OVER = "handing_over"  # asked to checkpoint and stop (pause, migrate, sweep stop)
    LOST = "lost"                  # its worker died; waits for a new one
    PAUSED = "paused"              # stopped at a checkpoint until resumed by hand
    STOPPED = "stopped"            # stopped with the sweep; the next driver resumes it
    SUPERSEDED = "superseded"      # another driver's worker runs it now
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"


FINISHED = frozenset({State.COMPLETE, State.PRUNED, State.FAILED})
WANTS_WORKER = frozenset({State.QUEUED, State.LOST})
ON_WORKER = frozenset({State.RUNNING, State.HANDING_OVER})


# --- events --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Assigned:
    """The driver gives the trial a worker."""


@dataclass(frozen=True)
class Rejected:
    """The sampled point cannot become a trial (its schedule is invalid): it fails at once."""
    error: str


@dataclass(frozen=True)
class Placed:
    """The worker's process began running the trial."""
    node: str
    node_id: str
    details: dict = field(default_factory=dict)  # pid, accelerators: for the user, not decisions


@dataclass(frozen=True)
class Started:
    """The trainable resumes at ``step``; ``replay`` holds reports saved with that checkpoint."""
    step: int
    replay: tuple = ()
    notice: str = ""


@dataclass(frozen=True)
class Recovered:
    """Reports found saved with the trial's own checkpoints by a driver that adopts it: the
    previous driver may have died before it recorded them (the checkpoint may be replaced, by an
    exploit, before the trial runs again and replays them)."""
    replay: tuple


@dataclass(frozen=True)
class Report:
    step: int
    metrics: dict
    hyperparams: dict
    time: float
    awaits: bool = False


@dataclass(frozen=True)
class CheckpointDurable:
    step: int
    path: str = ""


@dataclass(frozen=True)
class Done:
    values: dict
    checkpoint: str = ""


@dataclass(frozen=True)
class Pruned:
    reason: str = ""


@dataclass(frozen=True)
class Raised:
    error: str
    traceback: str = ""


@dataclass(frozen=True)
class WorkerLost:
    error: str


@dataclass(frozen=True)
class Interrupted:
    """The trial checkpointed and stopped: ``paused``, ``stopped``, ``migrate`` or ``preempted``."""
    reason: str


@dataclass(frozen=True)
class Superseded:
    reason: str


@dataclass(frozen=True)
class Control:
    """``pause``, ``resume``, ``migrate`` (with a placement), ``stop`` (the sweep stops) or
    ``prune`` (a paused trial ends pruned).
    ``worker_told``: the worker already knows (a pause answered to its report): no Interrupt."""
    action: str
    placement: Optional[dict] = None
    worker_told: bool = False


Event = Union[Assigned, Rejected, Placed, Started, Recovered, Report, CheckpointDurable, Done,
              Pruned, Raised, WorkerLost, Interrupted, Superseded, Control]


# --- actions -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    placement: Optional[dict] = None


@dataclass(frozen=True)
class Decide:
    """Record ``value`` at ``step`` in the study (unless it has it: ``tell``) and, if ``answer``,
    ask the strategy and answer the waiting worker."""
    step: int
    value: float
    answer: bool
    tell: bool = True


@dataclass(frozen=True)
class AnswerWorker:
    prune: bool


@dataclass(frozen=True)
class Interrupt:
    reason: str


@dataclass(frozen=True)
class Tell:
    state: State
    values: Optional[list] = None


@dataclass(frozen=True)
class SaveAttrs:
    """Persist the restart counters and log on the study's trial."""


@dataclass(frozen=True)
class WriteHistory:
    pass


@dataclass(frozen=True)
class WriteTrial:
    pass


@dataclass(frozen=True)
class ReleaseWorker:
    """The worker is free for the next trial."""


@dataclass(frozen=True)
class KillWorker:
    """The worker must go (its process got SIGTERM, or it is a pending actor no one waits for)."""


@dataclass(frozen=True)
class ForgetWorker:
    """The worker is dead already."""


@dataclass(frozen=True)
class Emit:
    """A progress event for the user: ``kind`` and its info."""
    kind: str
    info: dict


# A finished trial's records are written before the study is told: a driver killed in between
# leaves a trial the study still calls RUNNING, which the next driver finishes from its final
# checkpoint, never a finished trial without its row.
Action = Union[Launch, Decide, AnswerWorker, Interrupt, Tell, SaveAttrs, WriteHistory,
               WriteTrial, ReleaseWorker, KillWorker, ForgetWorker, Emit]


@dataclass(frozen=True)
class Rules:
    """What the sweep config says about every trial."""
    objectives: tuple[str, ...]
    decides: bool = False  # the strategy decides at each report (workers wait for it)
    max_restarts: int = 3
    retries: int = 0


@dataclass
class Lifecycle:
    """One trial: its state, what it has reported, and why it restarted."""

    number: int
    rules: Rules
    state: State = State.QUEUED
    node: str = ""
    node_id: str = ""
    placed: bool = False
    step: int = 0
    checkpoint_step: int = 0
    checkpoint: str = ""
    placement: Optional[dict] = None
    reports: dict = field(default_factory=dict)      # step -> report dict
    told_steps: set = field(default_factory=set)     # intermediate values the study has
    counts: dict = field(default_factory=lambda: {"lost": 0, "retries": 0, "interruptions": 0})
    restart_log: list = field(default_factory=list)
    notices: set = field(default_factory=set)
    values: Optional[dict] = None
    error: str = ""
    traceback: str = ""
    _after_interrupt: Optional[State] = None
    pause_step: Optional[int] = None  # the report step a pause answered to the worker lands on

    @property
    def restarts(self) -> int:
        """Resumes forced on the trial (faults, migrations, handovers, a new driver); a pause
        was asked for (by a user or the strategy), so it is in the log but not counted."""
        return sum(entry["kind"] != "pause" for entry in self.restart_log)

    @property
    def pausing(self) -> bool:
        """Paused, or on its way to a pause (told to checkpoint and stop)."""
        return self.state == State.PAUSED or (self.state == State.HANDING_OVER
                                              and self._after_interrupt == State.PAUSED)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def handle(self, event: Event, now: float = 0.0) -> list[Action]:
        """Apply one event; the actions the driver must carry out, in order."""
        handler = getattr(self, f"_on_{type(event).__name__}")
        return handler(event, now)

    # --- a worker runs the trial -----------------------------------------------------------

    def _on_Assigned(self, event: Assigned, now: float) -> list[Action]:
        if self.state not in WANTS_WORKER:
            return []
        placement, self.placement = self.placement, None
        self.state, self.placed = State.RUNNING, False
        return [Launch(placement)]

    def _on_Rejected(self, event: Rejected, now: float) -> list[Action]:
        if self.state != State.QUEUED:
            return []
        return self._fail(event.error, "", [])

    def _on_Placed(self, event: Placed, now: float) -> list[Action]:
        if self.state not in ON_WORKER:
            return []
        previous = self.node_id
        self.node, self.node_id, self.placed = event.node, event.node_id, True
        actions: list[Action] = []
        if self.restart_log and self.restart_log[-1]["to_node"] is None:
            self.restart_log[-1]["to_node"] = event.node_id
            actions.append(SaveAttrs())
        return actions + [Emit("placed", {**event.details, "node_id": event.node_id,
                                          "node": event.node, "previous": previous})]

    def _on_Started(self, event: Started, now: float) -> list[Action]:
        if self.state not in ON_WORKER:
            return []
        # The worker's resume step is the truth: announcements may lag behind the last durable
        # save. Later reports are redone; the ones saved with the checkpoint come back with it.
        self.step = event.step
        self.reports = {s: r for s, r in self.reports.items() if s <= event.step}
        actions = self._take_replay(event.replay, event.step)
        if self.restart_log and self.restart_log[-1].get("resumed_at") is None:
            self.restart_log[-1]["resumed_at"] = event.step
            actions.append(SaveAttrs())
        if event.notice and event.notice not in self.notices:  # said once per trial
            self.notices.add(event.notice)
            if self.restart_log:
                self.restart_log[-1]["note"] = event.notice
            actions.append(Emit("notice", {"message": event.notice}))
        return actions + [Emit("started", {"step": event.step, "resumed": bool(self.restart_log)})]

    def _on_Recovered(self, event: Recovered, now: float) -> list[Action]:
        actions = self._take_replay(event.replay, self.checkpoint_step)
        return actions + [WriteHistory()] if actions else []

    def _take_replay(self, replay: tuple, upto: int) -> list[Action]:
        """Saved reports up to step ``upto`` that are not known yet: kept, told, shown."""
        actions: list[Action] = []
        for report in replay:
            if report["step"] <= upto and report["step"] not in self.reports:
                self.reports[report["step"]] = dict(report)
                actions += self._tell_intermediate(report["step"], report["metrics"], False)
                actions.append(Emit("report", {"step": report["step"],  # loggers see it too
                                               "metrics": dict(report["metrics"]),
                                               "hyperparams": dict(report["hyperparams"])}))
        return actions

    def _on_Report(self, event: Report, now: float) -> list[Action]:
        if self.state not in ON_WORKER:
            return []
        self.step = event.step
        self.reports[event.step] = {"step": event.step, "metrics": dict(event.metrics),
                                    "hyperparams": dict(event.hyperparams), "time": event.time}
        actions = self._tell_intermediate(event.step, event.metrics, event.awaits)
        if event.awaits and not any(isinstance(a, Decide) for a in actions):
            actions.append(AnswerWorker(False))
        return actions + [Emit("report", {"step": event.step, "metrics": dict(event.metrics),
                                          "hyperparams": dict(event.hyperparams)})]

    def _tell_intermediate(self, step: int, metrics: dict, answer: bool) -> list[Action]:
        objective = self.rules.objectives[0]
        told = step in self.told_steps
        if not self.rules.decides or objective not in metrics or (told and not answer):
            return []
        # a step redone after a restart from an earlier point is decided again: the answer
        # given before (a pause, say) was lost with the work after that point
        self.told_steps.add(step)
        return [Decide(step, float(metrics[objective]), answer, tell=not told)]

    def _on_CheckpointDurable(self, event: CheckpointDurable, now: float) -> list[Action]:
        if self.state not in ON_WORKER:
            return []
        self.checkpoint_step, self.checkpoint = event.step, event.path
        return [WriteHistory()]

    # --- outcomes ----------------------------------------------------------------------------

    def _on_Done(self, event: Done, now: float) -> list[Action]:
        if self.state not in ON_WORKER:
            return []
        missing = [m for m in self.rules.objectives if m not in event.values]
        if missing:
            return self._fail(f"trainable never reported objective metric {missing[0]!r}", "",
                              [ReleaseWorker()])
        bad = [m for m in self.rules.objectives if not math.isfinite(event.values[m])]
        if bad:  # Optuna records such a trial as FAIL: so does everything else
            return self._fail(f"objective metric {bad[0]!r} is {event.values[bad[0]]}", "",
                              [ReleaseWorker()])
        self.values = dict(event.values)
        self.checkpoint = event.checkpoint or self.checkpoint
        self.state = State.COMPLETE
        values = [self.values[m] for m in self.rules.objectives]
        return [WriteHistory(), WriteTrial(), Tell(State.COMPLETE, values), ReleaseWorker(),
                self._finished_event()]

    def _on_Pruned(self, event: Pruned, now: float) -> list[Action]:
        if self.state not in ON_WORKER:
            return []
        self.state = State.PRUNED
        return [WriteHistory(), WriteTrial(), Tell(State.PRUNED), ReleaseWorker(),
                self._finished_event()]

    def _on_Raised(self, event: Raised, now: float) -> list[Action]:
        if self.state not in ON_WORKER:
            return []
        if self.counts["retries"] < self.rules.retries:
            self.counts["retries"] += 1
            self._log_restart("retry", f"retry after {event.error}"[:200], now)
            self.state = State.QUEUED
            return [SaveAttrs(), WriteHistory(), ReleaseWorker(),
                    Emit("requeued", {"why": "retry", "error": event.error,
                                      "from_step": self.checkpoint_step})]
        return self._fail(event.error, event.traceback, [ReleaseWorker()])

    def _on_WorkerLost(self, event: WorkerLost, now: float) -> list[Action]:
        if self.state not in ON_WORKER:
            return []
        if self.counts["lost"] >= self.rules.max_restarts:
            return self._fail(f"worker lost {self.counts['lost'] + 1} times; last: {event.error}",
                              "", [ForgetWorker()])
        self.counts["lost"] += 1
        self._log_restart("lost", event.error, now)
        after, self._after_interrupt = self._after_interrupt, None
        if after == State.PAUSED and self.pause_step is not None \
                and self.checkpoint_step < self.pause_step:
            after = None  # a pause at a step lands there: the work up to it is redone first
        self.pause_step = None
        self.state = after or State.LOST  # a pause or stop in flight still lands
        return [ForgetWorker(), SaveAttrs(), WriteHistory(),
                Emit("requeued", {"why": "lost", "error": event.error,
                                  "from_step": self.checkpoint_step})]

    def _on_Interrupted(self, event: Interrupted, now: float) -> list[Action]:
        if self.state not in ON_WORKER:
            return []
        target, self._after_interrupt = self._after_interrupt, None
        self.pause_step = None
        # a worker whose process got SIGTERM is going away: never reuse it
        release: Action = KillWorker() if event.reason == "preempted" else ReleaseWorker()
        if target == State.STOPPED or (target is None and event.reason == "stopped"):
            self.state = State.STOPPED
            return [WriteHistory(), release, Emit("stopped", {"step": self.checkpoint_step})]
        self.counts["interruptions"] += 1
        if target == State.PAUSED or event.reason == "paused":
            self._log_restart("pause", "paused", now)
            self.state = State.PAUSED
            return [SaveAttrs(), WriteHistory(), release,
                    Emit("paused", {"step": self.checkpoint_step})]
        kind = "migrate" if event.reason == "migrate" else "handover"
        if kind == "handover" and self.placement is None:
            self.placement = {"avoid": self.node_id}  # prefer leaving the node being reclaimed
        self._log_restart(kind, event.reason, now)
        self.state = State.QUEUED
        return [SaveAttrs(), WriteHistory(), release,
                Emit("requeued", {"why": kind, "from_step": self.checkpoint_step})]

    def _on_Superseded(self, event: Superseded, now: float) -> list[Action]:
        if self.state not in ON_WORKER:
            return []
        self.state = State.SUPERSEDED
        return [ReleaseWorker(), Emit("superseded", {"reason": event.reason})]

    def _fail(self, error: str, traceback: str, worker: list[Action]) -> list[Action]:
        self.state, self.error, self.traceback = State.FAILED, error, traceback
        return [WriteHistory(), WriteTrial(), Tell(State.FAILED), *worker, self._finished_event()]

    def _finished_event(self) -> Emit:
        return Emit("finished", {"state": self.state.name, "values": self.values or {},
                                 "error": self.error})

    # --- steering ----------------------------------------------------------------------------

    def _on_Control(self, event: Control, now: float) -> list[Action]:
        action = event.action
        if self.finished or self.state == State.SUPERSEDED:
            return [Emit("notice", {"message": f"trial {self.number} is {self.state.value}; "
                                               f"nothing to {action}"})] if action != "stop" else []
        if action == "stop":
            return self._stop()
        if action == "prune":  # the strategy ends a trial it paused
            if self.state not in (State.PAUSED, State.STOPPED):
                return [Emit("notice", {"message": f"trial {self.number} is not paused "
                                                   f"({self.state.value}); not pruned"})]
            self.state = State.PRUNED
            return [WriteHistory(), WriteTrial(), Tell(State.PRUNED), self._finished_event()]
        if action == "pause":
            return self._pause(event.worker_told)
        if action == "resume":
            if self.state not in (State.PAUSED, State.STOPPED):
                return [Emit("notice", {"message": f"trial {self.number} is not paused "
                                                   f"({self.state.value})"})]
            self.state = State.QUEUED
            return [Emit("resumed", {"from_step": self.checkpoint_step})]
        if action == "migrate":
            self.placement = event.placement
            if self.state == State.RUNNING and self.placed:
                self.state = State.HANDING_OVER
                return [Interrupt("migrate")]
            if self.state == State.RUNNING:  # not started yet: start it where asked instead
                self.state = State.QUEUED
                return [KillWorker()]
            return []
        raise ValueError(f"unknown control action {action!r}")

    def _pause(self, worker_told: bool = False) -> list[Action]:
        return self._halt(State.PAUSED, "paused", worker_told)

    def _stop(self) -> list[Action]:
        return self._halt(State.STOPPED, "stopped")

    def _halt(self, target: State, reason: str, worker_told: bool = False) -> list[Action]:
        """Pause or stop: at once when no worker runs the trial, else at its next checkpoint."""
        emit = [Emit(reason, {"step": self.checkpoint_step})] if target == State.PAUSED else []
        if self.pausing:
            if target == State.PAUSED:
                return [Emit("notice", {"message": f"trial {self.number} is already paused"})]
            return []
        if self.state in WANTS_WORKER or self.state == State.STOPPED:
            self.state = target
            return emit
        if self.state == State.RUNNING and not self.placed:
            self.state = target  # its actor never started: nothing to checkpoint
            return [KillWorker(), *emit]
        if self.state == State.RUNNING:
            self.state, self._after_interrupt = State.HANDING_OVER, target
            if worker_told:  # answered to the waiting report: it checkpoints at that step
                self.pause_step = self.step
            return [] if worker_told else [Interrupt(reason)]
        if self._after_interrupt != State.PAUSED:  # handing over already: stop there instead
            self._after_interrupt = target
        return []

    def _log_restart(self, kind: str, reason: str, now: float) -> None:
        self.restart_log.append({"time": now, "kind": kind, "reason": reason,
                                 "from_node": self.node_id, "from_step": self.checkpoint_step,
                                 "to_node": None, "resumed_at": None})
        self.placed = False

    def resumed_by_new_driver(self, reason: str, now: float) -> None:
        """A trial picked up from a driver that stopped or was lost: an unbounded restart."""
        self.counts["interruptions"] += 1
        self._log_restart("driver", reason, now)
