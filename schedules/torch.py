"""PyTorch adapter: schedules drive any numeric hyperparameter of any ``torch.optim`` optimizer.

    scheduler = schedules.torch.attach(optimizer, learning_rate=lr_spec, b1=b1_spec,
                                       weight_decay=1e-4)
    for batch in data:
        loss(batch).backward(); optimizer.step(); optimizer.zero_grad(); scheduler.step()

The schedule, not the optimizer's ``param_groups``, is the source of truth: the scheduled values
for the current update are written again right before every ``optimizer.step()`` and right after
every ``optimizer.load_state_dict()``, so a checkpoint restores the exact sequence in either load
order, and values a checkpoint or a PBT mutation left in ``param_groups`` cannot override it.
"""

from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from schedules import (CHUNK, ReduceOnPlateau, Schedule, ScheduleError, as_schedule,
                       first_difference, from_spec)

__all__ = ["ALIASES", "CHUNK", "FORMAT", "HyperparamScheduler", "attach"]

FORMAT = "sweep.schedules/1"
"""The ``format`` key of a state dict; the Arrow checkpoint store recognises it by this value."""

# Values are computed for [c * CHUNK, (c + 1) * CHUNK) at once (schedules.CHUNK): one vectorised
# evaluation per chunk instead of a numpy scalar formula per step, and chunks aligned to absolute
# multiples of CHUNK so a resumed run computes bit-identical values.

ALIASES = {"learning_rate": "lr", "b1": "betas.0", "b2": "betas.1"}
"""optax names whose param_group key differs; other optax names (eps, weight_decay, momentum) are
the keys themselves, and any raw param_group key (``"lr"``, ``"betas.1"``, ``"alpha"``) works."""

_OPTAX_NAMES = ("learning_rate", "b1", "b2", "eps", "weight_decay", "momentum")
"""The optax hyperparameter names ``attach`` accepts besides raw param_group keys."""

ScheduleLike = Union[Schedule, Mapping[str, Any], float]


@dataclass
class _Slot:
    """One scheduled (param group, key) pair, with its current chunk of values."""

    group: int
    name: str
    key: str
    field: str
    pos: int | None
    schedule: Schedule
    state: dict[str, Any] | None
    column: list[float]


def _is_number(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1 and value.is_floating_point()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _did_you_mean(name: str, params: Mapping[str, Any], numeric: list[str]) -> str:
    """``"did you mean 'learning_rate'? "`` for a typo, else ``""``: a misspelt name fails alike
    in every trial, so the closest optax name or numeric key this param group has is named."""
    known = [n for n in _OPTAX_NAMES if ALIASES.get(n, n).partition(".")[0] in params]
    close = difflib.get_close_matches(name, known + numeric, n=1, cutoff=0.75)
    return f"did you mean {close[0]!r}? " if close else ""


def _resolve(optimizer: Optimizer, group: int, name: str) -> tuple[str, str, int | None]:
    """The param_group key a hyperparameter name drives: (key, field, tuple position)."""
    key = ALIASES.get(name, name)
    field, _, index = key.partition(".")
    pos = int(index) if index.isdigit() else None
    params = optimizer.param_groups[group]
    where = f"param group {group}, hyperparameter {name!r}"
    if field not in params or ("." in key and pos is None):
        numeric = sorted(k for k, v in params.items() if _is_number(v))
        hint = _did_you_mean(name, params, numeric)
        raise ScheduleError(f"{where}: {type(optimizer).__name__} has no hyperparameter {key!r} "
                            f"({hint}numeric ones: {', '.join(numeric)})")
    value = params[field]
    if pos is not None:
        if not isinstance(value, (tuple, list)) or pos >= len(value):
            raise ScheduleError(f"{where}: {field!r} is {value!r}, which has no element {pos}")
        value = value[pos]
    elif isinstance(value, (tuple, list)):
        raise ScheduleError(f"{where}: {field!r} is a tuple; schedule its elements as "
                            + ", ".join(f"'{field}.{i}'" for i in range(len(value))))
    if not _is_number(value):
        raise ScheduleError(f"{where}: {key!r} holds {value!r}, not a number")
    return key, field, pos


def _listed(where: set[tuple[int, str]]) -> str:
    return ", ".join(f"group {g} {key!r}" for g, key in sorted(where)) or "none"


def _plain(state: Mapping[str, Any]) -> dict[str, Any]:
    """A plateau state as Python floats and ints (checkpoints hold plain data only)."""
    return {k: np.asarray(v).item() for k, v in state.items()}


class HyperparamScheduler(LRScheduler):
    """A torch ``LRScheduler`` whose hyperparameters, learning rate or not, follow schedules.

    After construction the optimizer holds the values for update 0, after ``k`` calls of
    :meth:`step` those for update ``k`` (``last_epoch == k``). Stateful schedules
    (``reduce_on_plateau``) move only when :meth:`report` feeds them a metric.

    Like torch's own ``ReduceLROnPlateau`` it does not run ``LRScheduler.__init__``: that would
    wrap ``optimizer.step`` for an ordering warning this class never gives and add
    ``initial_lr`` to every param group, neither of which a schedule indexed by update needs.
    """

    def __init__(self, optimizer: Optimizer,
                 hyperparams: Mapping[str, ScheduleLike | Sequence[ScheduleLike]],
                 groups: Sequence[int] | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
        count = len(optimizer.param_groups)
        groups = list(range(count)) if groups is None else [int(g) for g in groups]
        if len(set(groups)) != len(groups) or not all(0 <= g < count for g in groups):
            raise ScheduleError(f"groups: expected distinct indices below {count} (the "
                                f"optimizer's param groups), got {groups}")
        self.optimizer = optimizer
        self._slots: list[_Slot] = []
        taken: dict[tuple[int, str], str] = {}
        for name, given in hyperparams.items():
            per_group = list(given) if isinstance(given, (list, tuple)) else [given] * len(groups)
            if len(per_group) != len(groups):
                raise ScheduleError(f"{name}: expected one schedule per driven param group "
                                    f"({len(groups)}), got {len(per_group)}")
            for group, value in zip(groups, per_group):
                key, field, pos = _resolve(optimizer, group, name)
                if (group, key) in taken:
                    raise ScheduleError(f"param group {group}, hyperparameter {name!r}: {key!r} "
                                        f"is already driven by {taken[group, key]!r}")
                taken[group, key] = name
                try:
                    schedule = as_schedule(value)
                except ScheduleError as exc:
                    raise ScheduleError(f"param group {group}, hyperparameter {name!r}: {exc}") \
                        from None
                state = _plain(schedule.init_state()) if schedule.stateful else None
                self._slots.append(_Slot(group, name, key, field, pos, schedule, state, []))
        self._plan: list[tuple[int, str, int | None, list[float]]] = []
        self._chunk: int | None = None
        self.last_epoch = 0
        self._apply()
        self.base_lrs = list(self._last_lr)
        for handle in (optimizer.register_step_pre_hook(self._hook()),
                       optimizer.register_load_state_dict_post_hook(self._hook())):
            weakref.finalize(self, handle.remove)  # a scheduler that is dropped stops driving

    def _hook(self) -> Callable[..., None]:
        """An optimizer hook that re-writes the scheduled values; holds the scheduler weakly."""
        ref = weakref.ref(self)

        def rewrite(optimizer: Optimizer, *_: Any) -> None:
            scheduler = ref()
            if scheduler is not None:
                scheduler._write()

        return rewrite

    def _fill(self, chunk: int) -> None:
        """Compute the values of ``chunk`` for every slot (stateful ones repeat their value)."""
        start, stop = chunk * CHUNK, (chunk + 1) * CHUNK
        for slot in self._slots:
            slot.column = ([float(slot.state["value"])] * CHUNK if slot.state is not None
                           else slot.schedule.values(start, stop).tolist())
        self._plan = [(s.group, s.field, s.pos, s.column) for s in self._slots]
        self._chunk = chunk

    def _write(self) -> None:
        """Put the values for update ``last_epoch`` into the param groups (the per-step path)."""
        chunk, i = divmod(self.last_epoch, CHUNK)
        if chunk != self._chunk:
            self._fill(chunk)
        groups = self.optimizer.param_groups
        for group, field, pos, column in self._plan:
            params = groups[group]
            current = params[field]
            if pos is None:
                if isinstance(current, Tensor):
                    current.fill_(column[i])  # capturable / fused optimizers read lr in place
                else:
                    params[field] = column[i]
            elif isinstance(current[pos], Tensor):
                current[pos].fill_(column[i])
            else:
                params[field] = (*current[:pos], column[i], *current[pos + 1:])

    def _apply(self) -> None:
        self._write()
        self._last_lr = [lr.clone() if isinstance(lr, Tensor) else lr
                         for lr in (g["lr"] for g in self.optimizer.param_groups)]

    def step(self) -> None:  # type: ignore[override]
        """Advance to the next update and write its values into the optimizer."""
        self.last_epoch += 1
        self._apply()

    def report(self, metric: float) -> None:
        """Feed a metric to every stateful schedule (reduce_on_plateau) and apply the result.

        Semantics of torch's ``ReduceLROnPlateau.step(metric)``; without stateful schedules this
        does nothing, so a loop may report unconditionally.
        """
        stateful = [s for s in self._slots if s.state is not None]
        if not stateful:
            return
        value = float(metric)
        for slot in stateful:
            schedule: ReduceOnPlateau = slot.schedule  # type: ignore[assignment]
            slot.state = _plain(schedule.update(slot.state, value, np))
            slot.column[:] = [float(slot.state["value"])] * CHUNK  # in place: _plan shares it
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Plain data only (``torch.load(weights_only=True)`` accepts it), specs included.

        ``{"format": FORMAT, "last_epoch": k, "hyperparams": [{"group", "name", "key", "spec",
        "state", "value"}, ...]}``: ``state`` is a plateau state or None, ``value`` the value for
        update ``k`` (for readers of a checkpoint; loading recomputes it from the spec).
        """
        i = self.last_epoch % CHUNK
        return {"format": FORMAT, "last_epoch": self.last_epoch, "hyperparams": [
            {"group": s.group, "name": s.name, "key": s.key, "spec": s.schedule.spec(),
             "state": None if s.state is None else dict(s.state), "value": s.column[i]}
            for s in self._slots]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue where ``state_dict`` stopped; refuse one whose schedules differ from ours on
        a step before it (a fork may continue with another schedule that agrees until then).

        Call it before or after ``optimizer.load_state_dict``: either way the optimizer ends up
        holding this scheduler's values for the restored update.
        """
        if state_dict.get("format") != FORMAT:
            raise ScheduleError(f"scheduler state dict: expected format {FORMAT!r}, got "
                                f"{state_dict.get('format')!r}")
        saved = {(int(e["group"]), e["key"]): e for e in state_dict["hyperparams"]}
        ours = {(s.group, s.key): s for s in self._slots}
        if saved.keys() != ours.keys():
            raise ScheduleError(f"scheduler state dict drives other hyperparameters: missing "
                                f"{_listed(ours.keys() - saved.keys())}; unexpected "
                                f"{_listed(saved.keys() - ours.keys())}")
        last_epoch = int(state_dict["last_epoch"])
        if last_epoch < 0:
            raise ScheduleError(f"scheduler state dict: last_epoch must be >= 0, got {last_epoch}")
        states = {}
        for where, slot in ours.items():
            entry = saved[where]
            label = f"param group {slot.group}, hyperparameter {slot.name!r} ({slot.key})"
            try:
                schedule = from_spec(entry["spec"])
            except ScheduleError as exc:
                raise ScheduleError(f"{label}: saved spec is invalid: {exc}") from None
            differs = first_difference(schedule, slot.schedule, last_epoch)
            if differs is not None:
                raise ScheduleError(f"{label}: the state dict was saved at step {last_epoch} "
                                    f"with schedule {entry['spec']}, and this scheduler's "
                                    f"{slot.schedule.spec()} differs from it at step {differs}; "
                                    f"build the scheduler from the checkpoint's specs to resume")
            if slot.state is not None:
                saved_state = entry.get("state") or {}
                missing = slot.state.keys() - saved_state.keys()
                if missing:
                    raise ScheduleError(f"{label}: saved state lacks {sorted(missing)}")
                states[where] = _plain({k: saved_state[k] for k in slot.state})
        for where, state in states.items():
            ours[where].state = state
        self.last_epoch = last_epoch
        self._chunk = None
        self._apply()


def attach(optimizer: Optimizer, *, groups: Sequence[int] | None = None,
           **hyperparams: ScheduleLike | Sequence[ScheduleLike]) -> HyperparamScheduler:
    """Drive ``optimizer``'s hyperparameters by schedules, e.g. ``learning_rate=spec, b1=0.9``.

    Each value is a Schedule, a spec dict or a number (a constant), or a list of those with one
    per driven param group; ``groups`` picks the driven param groups (all by default).
    """
    return HyperparamScheduler(optimizer, hyperparams, groups)
