"""PyTorch adapter: schedules drive any numeric hyperparameter of any ``torch.optim`` optimizer.

    scheduler = schedules.torch.attach(optimizer, learning_rate=lr_spec, b1=b1_spec,
                                       weight_decay=1e-4)
    for batch in data:
        loss(batch).backward(); optimizer.step(); optimizer.zero_grad(); scheduler.step()

The schedule, not the optimizer's ``param_groups``, is the source of truth: right before every
``optimizer.step()`` the param groups are checked to hold the scheduled values for the current
update, and whatever else is there is overwritten, as it is right after every
``optimizer.load_state_dict()``; so a checkpoint restores the exact sequence in either load order,
and values a checkpoint or a PBT mutation left in ``param_groups`` cannot override it. The check
is by identity (the very objects the scheduler stored), so it costs a few comparisons per step.
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


@dataclass
class _Entry:
    """One param_group key with scheduled values: a number (one slot), or a tuple such as
    ``betas`` whose scheduled elements are its slots (in position order).

    ``whole``: the schedule determines the entire value (a number, or a tuple whose every element
    is scheduled), so ``column`` holds the exact objects to store, tuples prebuilt per chunk.
    Otherwise (a tuple with unscheduled elements) the tuple is rebuilt around the others, and
    ``written`` holds the last tuple stored, the object the guard looks for.
    """

    group: int
    field: str
    slots: list[_Slot]
    whole: bool
    column: list[Any]
    written: list[Any]


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
        self._entries = self._group(optimizer)
        # The per-step state. A chunk's values for the whole entries are rows, one tuple per
        # update in the order of _where; _row is the row last stored, for update _row_epoch: the
        # very int object last_epoch then held, so one identity test says nobody set last_epoch.
        self._where: tuple[tuple[int, str], ...] = tuple(
            (e.group, e.field) for e in self._entries if e.whole)
        self._partial: list[tuple[int, str, list[Any], list[tuple[int, list[float]]]]] = []
        self._rows: list[tuple[Any, ...]] = []
        self._start = -1  # the first update of the chunk in _rows; -1: none computed
        self._i = 0  # _row's index in _rows
        self._row: tuple[Any, ...] | None = None
        self._row_epoch: int | None = None
        lr = {g: j for j, (g, key) in enumerate(self._where) if key == "lr"}
        self._lr_slots = [lr[g] for g in range(len(optimizer.param_groups))] \
            if lr.keys() == set(range(len(optimizer.param_groups))) else None
        self._lr_row: tuple[Any, ...] = ()  # with _last_lr None: get_last_lr() is read off it
        self._last_lr: list[float | Tensor] | None = []
        self.last_epoch = 0
        self._apply()
        self.base_lrs = list(self.get_last_lr())
        for handle in (optimizer.register_step_pre_hook(self._pre_hook()),
                       optimizer.register_load_state_dict_post_hook(self._post_hook())):
            weakref.finalize(self, handle.remove)  # a scheduler that is dropped stops driving

    def _group(self, optimizer: Optimizer) -> list[_Entry]:
        """The slots gathered by param_group key: ``betas.0`` and ``betas.1`` make one entry."""
        by_key: dict[tuple[int, str], list[_Slot]] = {}
        for slot in self._slots:
            by_key.setdefault((slot.group, slot.field), []).append(slot)
        entries = []
        for (group, field), slots in by_key.items():
            slots.sort(key=lambda s: -1 if s.pos is None else s.pos)
            whole = slots[0].pos is None or (
                [s.pos for s in slots] == list(range(len(optimizer.param_groups[group][field]))))
            entries.append(_Entry(group, field, slots, whole, [], [None]))
        return entries

    def _pre_hook(self) -> Callable[[Optimizer, Any, Any], None]:
        """The optimizer's step pre-hook, the guard: before every update, make sure the param
        groups hold the scheduled values for ``last_epoch``. It holds the scheduler weakly.

        What :meth:`_write` and :meth:`step` stored is recognised by identity (the very float or
        tuple object of the row), so when nothing touched the param groups since, the guard only
        compares; any other value (a checkpoint's, a PBT mutation's, a tensor, a value written
        into a tensor) gets the full write. The check is inlined here: it runs every update.
        """
        ref = weakref.ref(self)

        def guard(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
            scheduler = ref()
            if scheduler is None:
                return
            if scheduler.last_epoch is scheduler._row_epoch:
                row = scheduler._row
                groups = optimizer.param_groups
                j = 0
                for group, key in scheduler._where:
                    if groups[group][key] is not row[j]:
                        break
                    j += 1
                else:
                    for group, key, written, _ in scheduler._partial:
                        if groups[group][key] is not written[0]:
                            break
                    else:
                        return
            scheduler._write()

        return guard

    def _post_hook(self) -> Callable[[Optimizer], None]:
        """The optimizer's load_state_dict post-hook: the full write. It holds the scheduler
        weakly."""
        ref = weakref.ref(self)

        def rewrite(optimizer: Optimizer) -> None:
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
        self._assemble()
        self._start = start

    def _assemble(self) -> None:
        """The rows and partial-tuple plan from the slots' columns."""
        for entry in self._entries:
            if entry.whole:
                entry.column = (entry.slots[0].column if entry.slots[0].pos is None
                                else list(zip(*(s.column for s in entry.slots))))
        columns = [e.column for e in self._entries if e.whole]
        self._rows = list(zip(*columns)) if columns else [()] * CHUNK
        self._partial = [(e.group, e.field, e.written, [(s.pos, s.column) for s in e.slots])
                         for e in self._entries if not e.whole]

    def _write(self) -> None:
        """Put the values for update ``last_epoch`` into the param groups, whatever they hold.

        Tensors (capturable / fused optimizers read lr in place) are filled in place, tuples
        rebuilt around their unscheduled elements. This is the full write: construction, chunk
        boundaries, loads, reports, and the guard when something else changed a param group.
        """
        epoch = self.last_epoch
        i = epoch - self._start
        if self._start < 0 or not 0 <= i < CHUNK:
            self._fill(epoch // CHUNK)
            i = epoch - self._start
        groups = self.optimizer.param_groups
        for entry in self._entries:
            params, field = groups[entry.group], entry.field
            current = params[field]
            if entry.slots[0].pos is None:
                if isinstance(current, Tensor):
                    current.fill_(entry.column[i])
                else:
                    params[field] = entry.column[i]
                continue
            if (entry.whole and isinstance(current, (tuple, list))
                    and len(current) == len(entry.slots)
                    and not any(isinstance(v, Tensor) for v in current)):
                params[field] = entry.column[i]
                continue
            for slot in entry.slots:
                current, pos = params[field], slot.pos
                if isinstance(current[pos], Tensor):
                    current[pos].fill_(slot.column[i])
                else:
                    params[field] = (*current[:pos], slot.column[i], *current[pos + 1:])
            current = params[field]
            entry.written[0] = current if type(current) is tuple and not any(
                isinstance(current[s.pos], Tensor) for s in entry.slots) else None
        self._i, self._row, self._row_epoch = i, self._rows[i], epoch

    def _snapshot_lr(self) -> None:
        """``get_last_lr()``'s list: each param group's lr now, a tensor one as a copy."""
        lrs = []
        for group in self.optimizer.param_groups:  # a loop, not a comprehension: half the cost
            lr = group["lr"]
            if type(lr) is not float and isinstance(lr, Tensor):  # isinstance(x, Tensor) is slow
                lr = lr.clone()
            lrs.append(lr)
        self._last_lr = lrs

    def get_last_lr(self) -> list[float | Tensor]:
        """Each param group's lr as of the last :meth:`step` (or construction, load, report)."""
        if self._last_lr is None:  # step() left it to be read off the row it stored
            row = self._lr_row
            self._last_lr = [row[j] for j in self._lr_slots]  # type: ignore[union-attr]
        return self._last_lr

    def _apply(self) -> None:
        self._write()
        self._snapshot_lr()

    def step(self) -> None:  # type: ignore[override]
        """Advance to the next update and write its values into the optimizer.

        The per-step path: where each param group still holds what was stored for the previous
        update (checked by identity), the next row's values are stored without further checks;
        anything else gets the full write.
        """
        last = self.last_epoch
        if last is self._row_epoch:
            i = self._i + 1
            if i < CHUNK:
                row, previous = self._rows[i], self._row
                groups = self.optimizer.param_groups
                j = 0
                for group, key in self._where:
                    params = groups[group]
                    if params[key] is not previous[j]:
                        break
                    params[key] = row[j]
                    j += 1
                else:
                    for group, key, written, slots in self._partial:
                        params = groups[group]
                        current = params[key]
                        if current is not written[0]:
                            break
                        new = list(current)
                        for pos, column in slots:
                            new[pos] = column[i]
                        params[key] = written[0] = tuple(new)
                    else:
                        self._i, self._row = i, row
                        self.last_epoch = self._row_epoch = last + 1
                        if self._lr_slots is not None and len(groups) == len(self._lr_slots):
                            self._last_lr = None  # every group's lr is in the row
                            self._lr_row = row
                        else:
                            self._snapshot_lr()
                        return
        self.last_epoch = last + 1
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
            slot.column[:] = [float(slot.state["value"])] * CHUNK  # in place: partials share it
        self._assemble()
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
        self._start, self._row_epoch = -1, None
        self._apply()


def attach(optimizer: Optimizer, *, groups: Sequence[int] | None = None,
           **hyperparams: ScheduleLike | Sequence[ScheduleLike]) -> HyperparamScheduler:
    """Drive ``optimizer``'s hyperparameters by schedules, e.g. ``learning_rate=spec, b1=0.9``.

    Each value is a Schedule, a spec dict or a number (a constant), or a list of those with one
    per driven param group; ``groups`` picks the driven param groups (all by default).
    """
    return HyperparamScheduler(optimizer, hyperparams, groups)
