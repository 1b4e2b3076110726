"""Forks: a new trial that continues another from one of its checkpoints with a new schedule.

``plan_fork`` checks a fork before it is asked for: the parent has a checkpoint at the step, and
every new schedule agrees, value for value, with the parent's on every step before it (so the
child's past is the parent's). The driver then runs it (runner/driver.py ``_fork``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

import schedules
from runner.checkpoint import CHECKPOINT_NAME
from runner.context import derive_seed
from runner.rundir import RunDir

if TYPE_CHECKING:
    from runner.config import SweepConfig


class ForkError(ValueError):
    """A fork that cannot continue its parent exactly; the message says why, in one line."""


def checkpoint_steps(run: RunDir, number: int) -> list[int]:
    """The steps trial ``number`` has checkpoint files at (named as the checkpoint store names
    them; unverified), without opening a store (which would claim the directory)."""
    names = (f.rsplit("/", 1)[-1] for f in run.list(RunDir.checkpoint_dir(number), ".arrow"))
    return sorted(int(m[1]) for name in names if (m := CHECKPOINT_NAME.fullmatch(name)))


def apply_sets(specs: Mapping[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """``specs`` with ``hyperparams.NAME.FIELD=VALUE`` (or ``hyperparams.NAME=VALUE``) applied;
    VALUE is read as YAML (``300``, ``1e-3``, ``1-sqrt``, ``{kind: constant, value: 0.1}``)."""
    out = {name: dict(spec) for name, spec in specs.items()}
    for item in sets:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or parts[0] != "hyperparams" or len(parts) not in (2, 3):
            raise ForkError(f"--set {item}: expected hyperparams.NAME.FIELD=VALUE or "
                            f"hyperparams.NAME=VALUE")
        value = yaml.safe_load(text)
        name = parts[1]
        if name not in out:
            raise ForkError(f"--set {item}: the trial has no schedule for {name!r} (it has "
                            f"{', '.join(sorted(out))})")
        if len(parts) == 2:
            out[name] = dict(value) if isinstance(value, dict) else \
                schedules.as_schedule(value).spec()
        else:
            out[name][parts[2]] = value
    return out


def plan_fork(run: RunDir, parent: int, parent_specs: Mapping[str, Any], at: int,
              sets: Sequence[str]) -> dict[str, Any]:
    """The child's schedule specs, or ForkError naming what is wrong."""
    steps = checkpoint_steps(run, parent)
    if at not in steps:
        have = ", ".join(map(str, steps)) or "none"
        raise ForkError(f"trial {parent} has no checkpoint at step {at} (it has: {have})")
    return check_agrees(parent, parent_specs, apply_sets(parent_specs, sets), at)


def check_agrees(parent: int, parent_specs: Mapping[str, Any], specs: Mapping[str, Any],
                 at: int) -> dict[str, Any]:
    """``specs`` in canonical form, or ForkError unless each is valid and agrees value for value
    with the parent's schedule of the same name on every step before ``at``."""
    if set(specs) != set(parent_specs):
        raise ForkError(f"the child's schedules ({', '.join(sorted(specs))}) are not the "
                        f"parent trial {parent}'s ({', '.join(sorted(parent_specs))})")
    for name, spec in specs.items():
        try:
            schedules.from_spec(spec)
        except schedules.ScheduleError as exc:
            raise ForkError(f"hyperparams.{name}: {exc}") from None
        differs = schedules.first_difference(parent_specs[name], spec, at)
        if differs is not None:
            raise ForkError(f"hyperparams.{name}: the new schedule differs from trial {parent}'s "
                            f"at step {differs}, before the fork step {at}: the child would not "
                            f"continue its parent's past")
    return {name: schedules.from_spec(spec).spec() for name, spec in specs.items()}


def plan_extend(run: RunDir, parent: int, parent_specs: Mapping[str, Any], budget: int,
                steps: int) -> tuple[dict[str, Any], int]:
    """A completed trial continued to ``steps``: (the child's specs, the step it forks from).

    Every WSD keeps its cooldown, moved to the new end; the fork starts at the earliest branch
    point (kept for every WSD trial). Any other schedule must already be constant from there on,
    else extending would change what it did.
    """
    if steps <= budget:
        raise ForkError(f"--steps {steps}: expected more than trial {parent}'s budget ({budget})")
    points = {name: schedules.branch_point(spec) for name, spec in parent_specs.items()}
    starts = [p for p in points.values() if p is not None]
    if not starts:
        kinds = ", ".join(f"hyperparams.{n} is a {s['kind']}" for n, s in parent_specs.items()
                          if s.get("kind") != "constant") or "no schedule at all"
        raise ForkError(f"trial {parent} has no wsd schedule to extend ({kinds}); a decay that "
                        f"ends at step {budget} cannot be extended without changing its past")
    at = min(starts)
    specs = {}
    for name, spec in parent_specs.items():
        if points[name] is not None:
            specs[name] = schedules.extend(spec, steps - budget)
            continue
        values = schedules.from_spec(spec).values(at, steps)
        if (values != values[0]).any():
            raise ForkError(f"hyperparams.{name}: a {spec['kind']} schedule still changes after "
                            f"step {at}; it cannot be extended without changing its past")
        specs[name] = dict(spec)
    if at not in checkpoint_steps(run, parent):
        raise ForkError(f"trial {parent} has no checkpoint at its branch point {at} (a trial run "
                        f"before branch points were kept?)")
    for name, spec in specs.items():
        differs = schedules.first_difference(parent_specs[name], spec, at)
        if differs is not None:  # cannot happen for a wsd; guards the rule above
            raise ForkError(f"hyperparams.{name}: the extension differs from trial {parent}'s "
                            f"at step {differs}, before its branch point {at}")
    return specs, at


def seed_root(number: int, trials: Mapping[int, Mapping[str, Any]],
              exploits: Sequence[Mapping[str, Any]], until: float = float("inf")) -> int:
    """The trial whose seed trial ``number``'s weights, data order and RNG streams descend from
    (as of step ``until``): an exploit continues its donor's, a fork its parent's."""
    own = sorted((e for e in exploits if e["member"] == number and e["step"] <= until),
                 key=lambda e: e["step"])
    if own:
        return seed_root(own[-1]["donor"], trials, exploits, own[-1]["step"])
    parent = trials.get(number, {}).get("parent")
    return number if parent is None else seed_root(parent, trials, exploits,
                                                   trials[number]["parent_step"])


def replay_config(config: "SweepConfig", number: int, trials: Mapping[int, Mapping[str, Any]],
                  exploits: Sequence[Mapping[str, Any]], storage: str) -> dict[str, Any]:
    """A one-trial config that trains trial ``number`` from scratch with its whole effective
    schedule, its params and its lineage's seed: what a PBT member (or a fork) followed. Its
    run dir is ``storage`` (one per replayed trial of one run: never another run's)."""
    import json

    row = trials[number]
    data = config.model_dump(mode="json", exclude_unset=True,
                             exclude={"storage", "study_storage", "loggers", "search", "pruner",
                                      "fidelity"})
    data.update(name=f"{config.name}-replay-{number}", storage=storage,
                search={"sampler": "random", "seed": 0, "n_trials": 1},
                hyperparams=json.loads(row["schedules"]), params=json.loads(row["params"]),
                trial_seed=derive_seed(config.seed, seed_root(number, trials, exploits)))
    steps = int(row["last_step"])  # a cooldown branch's may be shorter than the intervals
    data["budget"] = {**data["budget"], "steps": steps,
                      **{key: min(data["budget"][key], steps)
                         for key in ("report_every", "checkpoint_every")}}
    return data


def fork_problems(at: int, budget: int) -> None:
    """A fork at the end of the budget has nothing left to run."""
    if at >= budget:
        raise ForkError(f"step {at} is the end of the trial's budget ({budget}): nothing left to "
                        f"run (sweep extend continues a finished wsd trial to a longer budget)")


def fork_notes(specs: Mapping[str, Any], budget: int) -> list[str]:
    """What a fork will do that its user may not expect: a cooldown moved past the budget."""
    notes = []
    for name, spec in specs.items():
        start = schedules.branch_point(spec)
        if start is not None and start >= budget:
            notes.append(f"note: hyperparams.{name}'s cooldown now starts at step {start}, not "
                         f"before the budget ({budget}): this fork never cools down (sweep "
                         f"extend gives a finished trial a longer budget)")
    return notes
