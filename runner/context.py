"""What a trainable sees: its sampled params and schedules, state declaration, step loop, reports.

A trainable is ``def train(ctx: TrialContext) -> dict | None``. It declares its state once
(``ctx.track`` for torch objects, ``ctx.track_pytree`` for a JAX pytree), loops over
``ctx.steps()`` and calls ``ctx.report``. Checkpointing, restoring (RNG streams and data position
included) and stopping for pruning are the runner's job, done here.
"""

from __future__ import annotations

import importlib
import os
import random
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

import schedules
from runner.checkpoint import CheckpointStore

SCHEDULE_FORMAT = "sweep.schedules/1"


class TrainableError(ValueError):
    """The trainable's import path does not lead to a function."""


def resolve_trainable(path: str) -> Callable:
    """Import ``package.module:function`` and return the function."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainableError(f"cannot import module {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TrainableError(f"expected a function {attr!r} in module {module_name!r}")
    return fn


def resolve_class(path: str, base: type) -> type:
    """Import ``package.module:Class``, a subclass of ``base`` (a user's logger or strategy)."""
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"expected a subclass of {base.__module__}.{base.__qualname__}")
    return cls


class TrialPruned(Exception):
    """Raised inside the trainable when the pruner stops the trial; the runner catches it."""


class TrialInterrupted(Exception):
    """Raised at a step boundary after a checkpoint, when the trial is paused or handed over."""


@dataclass
class TrialTask:
    """Everything a worker needs to run (or resume) one trial: plain data, sent over Ray."""

    number: int
    trainable: str
    params: dict[str, Any]
    schedule_specs: dict[str, dict]
    steps: int
    report_every: int
    checkpoint_every: int
    seed: int
    checkpoint_root: str
    objective_metrics: list[str]
    wait_for_pruning: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    store_options: dict[str, Any] = field(default_factory=dict)  # CheckpointStore keywords
    restarted: bool = False  # run before: a trainable without declared state starts over
    keep_steps: list[int] = field(default_factory=list)  # checkpointed and kept: forks start there


def derive_seed(sweep_seed: int, number: int) -> int:
    """A trial's seed, a pure function of the sweep seed and the trial number."""
    return int(np.random.SeedSequence([sweep_seed, number]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The global RNG streams a trainable may draw from: Python, NumPy, torch CPU and CUDA."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state()}
    torch = sys.modules.get("torch")
    if torch is not None:
        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss),
                         float(cached)))
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in state:
        torch.set_rng_state(_cpu_tensor(state["torch"]))
        if "torch_cuda" in state and torch.cuda.is_available():
            # A trial resumed on a node with fewer GPUs than it was saved on keeps the streams of
            # the devices it still has (device i's stream goes back to device i).
            saved = state["torch_cuda"][:torch.cuda.device_count()]
            torch.cuda.set_rng_state_all([_cpu_tensor(s) for s in saved])


def _cpu_tensor(value):
    return value.cpu() if hasattr(value, "cpu") else value


def _as_tuples(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


class TrialContext:
    """The trainable's handle on its trial. Thread-confined: the worker runs one trial at a time."""

    def __init__(self, task: TrialTask, emit: Callable[[dict], Optional[bool]],
                 control: "Control") -> None:
        self.task = task
        self.number = task.number
        self.params: dict[str, Any] = dict(task.params)
        self.schedules: dict[str, schedules.Schedule] = {
            name: schedules.from_spec(spec) for name, spec in task.schedule_specs.items()}
        self.seed = task.seed
        self.extras: dict[str, Any] = {}
        self.start_step = 0
        self._emit = emit
        self._control = control
        self._objects: dict[str, Any] = {}
        self._pytree: Optional[Callable[[], Any]] = None
        # Claims the trial's checkpoint directory: a stale worker still running this trial (its
        # node partitioned away and given up on) can no longer write or prune checkpoints there.
        # where each WSD cooldown begins (sweep extend forks there) and where the strategy forks
        # (cooldown branches): always checkpointed and kept
        cooldowns = {schedules.branch_point(spec) for spec in task.schedule_specs.values()}
        self.branch_points = sorted(step for step in cooldowns | set(task.keep_steps)
                                    if step is not None and 0 < step < task.steps)
        self._store = CheckpointStore(task.checkpoint_root, **task.store_options,
                                      owner=f"{socket.gethostname()}:{os.getpid()}:"
                                            f"{secrets.token_hex(8)}",
                                      keep_steps=self.branch_points)
        self._unannounced: Optional[dict] = None  # the checkpoint event of a save in flight
        self._last_values: dict[str, float] = {}
        self._recent_reports: list[dict] = []  # since the last checkpoint: saved with the next
        self._started = False
        self.final_checkpoint = ""
        seed_everything(task.seed)
        self._restored = self._store.latest()
        if self._restored is not None:
            self.start_step = int(self._restored.state["position"]["step"])
            self.extras = dict(self._restored.state.get("extras") or {})
            # the values reported last before the checkpoint: ranked by retention, and the
            # trial's outcome if nothing is reported after the resume
            self._last_values = dict(self._restored.metadata.get("metrics") or {})
            self._check_specs(self._restored.metadata)

    @property
    def steps_total(self) -> int:
        return self.task.steps

    @property
    def report_every(self) -> int:
        return self.task.report_every

    @property
    def device(self) -> str:
        torch = sys.modules.get("torch")
        return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"

    def _check_specs(self, metadata: Mapping[str, Any]) -> None:
        """Refuse to continue a checkpoint with schedules that differ from its own on a step
        before it (computed value for value: a schedule that agrees until then may continue)."""
        saved, ours = metadata.get("schedule_specs"), self.task.schedule_specs
        if saved is None or saved == ours:
            return
        step = int(metadata["step"])
        for name in sorted(set(saved) | set(ours)):
            if name not in saved or name not in ours:
                raise schedules.ScheduleError(
                    f"trial {self.number}: the checkpoint of step {step} has a schedule for "
                    f"{name} on one side only; refusing to resume with a changed schedule")
            differs = schedules.first_difference(saved[name], ours[name], step)
            if differs is not None:
                raise schedules.ScheduleError(
                    f"trial {self.number}: the schedule of {name} differs from the checkpoint's "
                    f"at step {differs}, before its step {step}; refusing to resume with a "
                    f"changed past")

    # --- state declaration -------------------------------------------------------------------

    def track(self, **objects: Any) -> None:
        """Declare torch-style objects (``state_dict``/``load_state_dict``); restore them if resuming.

        Pass them in construction order (model, optimizer, scheduler): the scheduler is the source
        of truth for scheduled hyperparameters whatever order the states are loaded in.
        """
        self._objects.update(objects)
        if self._restored is not None:
            saved = self._restored.state["objects"]
            for name, obj in objects.items():
                if name not in saved:
                    raise KeyError(f"trial {self.number}: checkpoint has no state for {name!r}")
                obj.load_state_dict(saved[name])  # torch moves tensors to the params' device
            restore_rng(self._restored.state["rng"])

    def track_pytree(self, initial: Any, current: Callable[[], Any]) -> Any:
        """Declare a JAX pytree: ``current()`` returns it at checkpoint time.

        Returns the restored pytree when resuming (rebuilt into ``initial``'s structure, so optax
        states keep their types), else ``initial``.
        """
        self._pytree = current
        if self._restored is None:
            return initial
        restored = self._store.load(self.start_step, like={"pytree": initial})
        restore_rng(self._restored.state["rng"])
        return restored.state["pytree"]

    # --- the loop ----------------------------------------------------------------------------

    @property
    def tracks_state(self) -> bool:
        """Whether the trainable declared its state: without it a checkpoint restores nothing."""
        return bool(self._objects) or self._pytree is not None

    def start(self) -> None:
        """Tell the driver where the trial (re)starts; called once, when the step loop begins.

        A trainable that declared no state cannot resume mid-run (its weights would be fresh):
        it starts over from step 0, and the driver is told why.
        """
        if self._started:
            return
        self._started = True
        notice, replay = "", []
        if not self.tracks_state and (self.task.restarted or self._restored is not None):
            notice = (f"trial {self.number}: the trainable declares no state (ctx.track / "
                      f"ctx.track_pytree), so it starts over from step 0 instead of resuming")
            self._restored, self.start_step, self.extras = None, 0, {}
            self._last_values = {}
        elif self._restored is not None and self._restored.metadata.get("trial") == self.number:
            replay = list(self._restored.metadata.get("reports") or [])  # a fork's are its parent's
        self._emit({"type": "started", "step": self.start_step, "replay": replay,
                    "notice": notice, "stateless": not self.tracks_state})

    def steps(self) -> Iterator[int]:
        """Update indices from the resume point to the budget; checkpoints between them, and a
        final one at the end (the trained state of a completed trial)."""
        self.start()
        every = self.task.checkpoint_every
        for step in range(self.start_step, self.task.steps):
            yield step
            done = step + 1
            self._announce(wait=False)
            interrupt = self._control.interrupt_requested(self.number)
            due = done % every == 0 or done in self.branch_points or interrupt
            if done < self.task.steps and due:
                self.checkpoint(done)
            if interrupt and done < self.task.steps:
                self._announce(wait=True)  # the driver resumes the trial from this checkpoint
                raise TrialInterrupted(interrupt)
        if self.tracks_state and self.task.steps > self.start_step:
            self.final_checkpoint = self.checkpoint(self.task.steps)
        elif self._restored is not None and self.start_step == self.task.steps:
            self.final_checkpoint = self._restored.uri  # resumed after its final save

    def report_due(self, step: int) -> bool:
        """True after the update that closes a report interval (or the last update)."""
        done = step + 1
        return done % self.task.report_every == 0 or done == self.task.steps

    def report(self, step: int, **metrics: float) -> None:
        """Record metrics at ``step`` (updates done); raises TrialPruned if the pruner says so."""
        self.start()
        values = {k: float(v) for k, v in metrics.items()}
        event = {"type": "report", "step": int(step), "metrics": values, "time": time.time(),
                 "hyperparams": self._applied()}
        self._last_values.update(values)
        self._recent_reports.append({k: event[k] for k in ("step", "metrics", "time",
                                                            "hyperparams")})
        prune = self._emit(event)
        if prune:
            raise TrialPruned(f"pruned at step {step}")

    def checkpoint(self, step: int) -> str:
        """Save the declared state at ``step`` (updates done); its URI, or "" with no state."""
        if not self.tracks_state:
            return ""
        state = {"position": {"step": step}, "rng": capture_rng(), "extras": self.extras,
                 "objects": {n: o.state_dict() for n, o in self._objects.items()}}
        if self._pytree is not None:
            tree = self._pytree()
            state["pytree"] = tree
            records = self._optax_records(tree)
            if records is not None:
                state["schedules"] = records
        metadata = dict(self.task.metadata, trial=self.number, step=step,
                        schedule_specs=self.task.schedule_specs, params=self.task.params,
                        device=self.device, reports=self._recent_reports)
        self._recent_reports = []
        self._announce(wait=True)  # the save in flight, if any, ends before this one starts
        # the metrics last reported: what the store ranks its best checkpoints by
        uri = self._store.save(step, state, metadata, metrics=self._last_values)
        self._unannounced = {"type": "checkpoint", "step": step, "uri": uri}
        self._announce(wait=False)
        return uri

    def _announce(self, wait: bool) -> None:
        """Tell the driver of the last save once it is durable (at once unless it is in flight,
        or after waiting for it); the save's error, such as SupersededError, is raised here."""
        if self._unannounced is None or not (wait or self._store.idle()):
            return
        event, self._unannounced = self._unannounced, None  # a failed save is never announced
        self._store.wait()
        self._emit(event)

    def close(self) -> None:
        """Finish the save in flight (announcing it) and release the store; safe to repeat."""
        try:
            self._announce(wait=True)
        finally:
            self._store.close()

    def final_values(self) -> dict[str, float]:
        return dict(self._last_values)

    # --- applied hyperparameters -------------------------------------------------------------

    def _records(self) -> list[dict]:
        for obj in self._objects.values():
            if hasattr(obj, "state_dict") and type(obj).__module__ == "schedules.torch":
                return obj.state_dict()["hyperparams"]
        if self._pytree is not None:
            records = self._optax_records(self._pytree())
            if records is not None:
                return records["hyperparams"]
        return []

    def _applied(self) -> dict[str, float]:
        applied = {}
        for record in self._records():
            name = record["name"] if record["group"] == 0 else f"{record['name']}.{record['group']}"
            applied[name] = float(record["value"])
        return applied

    def _optax_records(self, tree: Any) -> Optional[dict]:
        if "schedules.optax" not in sys.modules and "optax" not in sys.modules:
            return None
        from schedules.optax import schedule_records

        try:
            return schedule_records(tree, self.schedules)
        except (LookupError, ValueError):  # plain optax, without schedules.optax.inject
            return None


class Control:
    """Commands from the driver (pause, hand over) that a running trial picks up between steps."""

    def __init__(self) -> None:
        self._interrupts: dict[int, str] = {}
        self._preempted = False

    def request_interrupt(self, number: int, reason: str) -> None:
        self._interrupts[number] = reason

    def preempt(self) -> None:
        """The whole process is going away: every trial hands over at its next step."""
        self._preempted = True

    def interrupt_requested(self, number: int) -> Optional[str]:
        return "preempted" if self._preempted else self._interrupts.get(number)

    def clear(self, number: int) -> None:
        self._interrupts.pop(number, None)
