"""Hyperparameter schedules as immutable, JSON-safe specs with one implementation of their math.

    >>> import schedules
    >>> s = schedules.from_spec({"kind": "warmup_cosine_decay", "init_value": 0.0,
    ...     "peak_value": 3e-3, "warmup_steps": 100, "decay_steps": 1000, "end_value": 1e-5})
    >>> schedules.from_spec(s.spec()) == s
    True

Adapters: ``schedules.torch.attach`` (a torch ``LRScheduler``) and ``schedules.optax.inject``
(``optax.inject_hyperparams``). This package imports neither Ray nor Optuna; torch and JAX are
imported only by their adapters.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pydantic import TypeAdapter, ValidationError

from schedules._kinds import KINDS, AnySpec, ReduceOnPlateau, Schedule

__all__ = ["KINDS", "ReduceOnPlateau", "Schedule", "ScheduleError", "from_spec", "as_schedule",
           "first_difference", "CHUNK", "branch_point", "extend", "cooldown"]


class ScheduleError(ValueError):
    """A schedule spec is invalid; the message names the field and what was expected."""


_ADAPTER = TypeAdapter(AnySpec)
CHUNK = 512
"""Adapters compute values for ``[c * CHUNK, (c + 1) * CHUNK)`` at once, chunks aligned to absolute
multiples of ``CHUNK``: a resumed run computes bit-identical values, and so does a comparison."""


def _describe(error: dict[str, Any]) -> str:
    """One clause of a ScheduleError: the field's dotted path (kind first) and what was expected."""
    loc = [str(part) for part in error["loc"]]
    where = ".".join(loc[:1] + [part for part in loc[1:] if part not in KINDS])
    prefix = f"{where}." if where else ""
    if error["type"] == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return f"{prefix}kind: unknown schedule kind {ctx.get('tag')!r}; expected one of " \
               f"{ctx.get('expected_tags')}"
    if error["type"] == "union_tag_not_found":
        return f"{prefix}kind: missing; expected one of {', '.join(sorted(KINDS))}"
    if error["type"] == "missing":
        return f"{where}: missing required field"
    if error["type"] == "extra_forbidden":
        kind = next((part for part in reversed(loc) if part in KINDS), None)
        allowed = ", ".join(f.alias or n for n, f in KINDS[kind].model_fields.items()
                            if n != "kind") if kind else ""
        return f"{where}: unknown field (expected one of: {allowed})"
    message = error["msg"].removeprefix("Value error, ")
    if loc and loc[-1] in KINDS:  # a check across fields: its message starts with the field it blames
        return f"{prefix}{message}"
    got = error.get("input")
    shown = "" if isinstance(got, (dict, Schedule)) or got is None else f" (got {got!r})"
    return f"{where}: {message}{shown}"


def from_spec(spec: Mapping[str, Any] | Schedule) -> Schedule:
    """Build the schedule a spec describes; raise ``ScheduleError`` naming any bad field."""
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, Mapping):
        raise ScheduleError(f"schedule spec: expected a mapping with a 'kind', got {spec!r}")
    try:
        return _ADAPTER.validate_python(dict(spec))
    except ValidationError as exc:
        raise ScheduleError("; ".join(_describe(e) for e in exc.errors())) from None


def as_schedule(value: Any) -> Schedule:
    """A schedule from a spec, a schedule, or a plain number (a constant)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return from_spec({"kind": "constant", "value": float(value)})
    return from_spec(value)


def first_difference(old: Any, new: Any, until: int) -> int | None:
    """The first step before ``until`` where ``new`` gives another value than ``old`` (bit for
    bit), or None when they agree on every step before it.

    A trial forked at step k with a new schedule continues its parent exactly only if the two
    agree before k: a WSD whose stable phase is extended agrees with its parent up to the
    parent's cooldown; a cosine whose length changed does not. Values are compared on the chunks
    the adapters compute (``schedules.torch.CHUNK`` steps aligned to multiples of it), so
    "agree" means what a resumed optimizer would really see. A stateful schedule
    (``reduce_on_plateau``) depends on the metrics it was fed: it agrees only with itself.
    """
    old, new = as_schedule(old), as_schedule(new)
    if old.stateful or new.stateful:
        return None if old == new or until <= 0 else 0
    for start in range(0, max(until, 0), CHUNK):
        a, b = old.values(start, start + CHUNK), new.values(start, start + CHUNK)
        differ = np.flatnonzero(a[: until - start] != b[: until - start])
        if differ.size:
            return start + int(differ[0])
    return None


def branch_point(spec: Any) -> int | None:
    """The step a WSD cooldown begins (alone or as the last part of a ``join``), or None.

    Before it the schedule is its stable phase: a run extended to a longer budget forks there
    and places the same cooldown at its new end.
    """
    schedule = as_schedule(spec)
    data = schedule.spec()
    if data["kind"] == "wsd":
        return int(data["warmup_steps"] + data["stable_steps"])
    if data["kind"] == "join" and data["schedules"]:
        inner = branch_point(data["schedules"][-1])
        offset = 0 if data.get("absolute") or not data["boundaries"] else data["boundaries"][-1]
        return None if inner is None else int(offset) + inner
    return None


def extend(spec: Any, by: int) -> dict[str, Any]:
    """A WSD (alone or last in a ``join``) whose stable phase is ``by`` steps longer: the same
    cooldown, ``by`` steps later. ScheduleError for a schedule that has no stable phase to grow."""
    data = as_schedule(spec).spec()
    if data["kind"] == "wsd":
        return from_spec({**data, "stable_steps": data["stable_steps"] + by}).spec()
    if data["kind"] == "join" and data["schedules"] and branch_point(spec) is not None:
        parts = list(data["schedules"])
        parts[-1] = extend(parts[-1], by)
        return from_spec({**data, "schedules": parts}).spec()
    raise ScheduleError(f"a {data['kind']} schedule cannot be extended without changing its "
                        f"past (only a wsd has a stable phase a longer run continues)")


def cooldown(spec: Any, start: int, stop: int, decay_type: str = "1-sqrt",
             end_value: float | None = None) -> dict[str, Any]:
    """``spec`` until ``start``, then a decay of ``decay_type`` from its value there to
    ``end_value`` (default: the spec's own ``end_value``, a join's last part's, else 0) reached
    at ``stop``.

    A cooldown branched from a run that has not decayed yet: it agrees with ``spec`` on every
    step before ``start``, so it forks from a checkpoint there. A WSD whose stable phase reaches
    ``start`` stays a WSD (its cooldown moved); any other schedule becomes a ``join``.
    """
    schedule = as_schedule(spec)
    if schedule.stateful:
        raise ScheduleError(f"a {schedule.kind} schedule cannot be cooled down (its value "
                            f"depends on the metrics it was fed, not on the step)")
    if not 0 <= start < stop:
        raise ScheduleError(f"cooldown: expected 0 <= start < stop, got start {start}, "
                            f"stop {stop}")
    data = schedule.spec()
    end = float(_end_value(data) if end_value is None else end_value)
    if data["kind"] == "wsd" and data["warmup_steps"] <= start <= data["warmup_steps"] + \
            data["stable_steps"]:
        return from_spec({**data, "stable_steps": start - data["warmup_steps"],
                          "decay_steps": stop - start, "decay_type": decay_type,
                          "end_value": end}).spec()
    decay = {"kind": "wsd", "peak_value": float(schedule(start)), "warmup_steps": 0,
             "stable_steps": 0, "decay_steps": stop - start, "end_value": end,
             "decay_type": decay_type}
    return from_spec({"kind": "join", "schedules": [data, decay], "boundaries": [start]}).spec()


def _end_value(data: dict[str, Any]) -> float:
    if "end_value" in data:
        return data["end_value"]
    return _end_value(data["schedules"][-1]) if data["kind"] == "join" else 0.0
