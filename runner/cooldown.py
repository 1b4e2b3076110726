"""Cooldown fidelity: a trial's score at each rung is a finished run, a cooldown branched from it.

With warmup-stable-decay schedules, a cooldown of 10-20% of the steps branched from any point of
the stable phase gives a run that matches one planned for that length (Hägele et al. 2024). So
a trial trains one trunk: its schedule before the final cooldown. At each rung r a branch forks
from the trunk's checkpoint at r - fraction * r and runs the cooldown to r; the branch's result
is the trial's intermediate value at r, on which Optuna's pruner decides. A promoted trunk goes
on from where it stood; it never trains through a cooldown it would have to undo. The last rung
is the full budget: the trunk's own schedule ends in its cooldown, so its end is the trial's.

A ``wsd`` keeps its own cooldown (its ``decay_steps`` share of its length, its ``decay_type``)
at every rung; any other schedule is cooled down with ``fidelity.fraction`` and
``fidelity.decay_type`` from its value at the branch point to its ``end_value`` (else 0).
Branches are trials of the study (forks, with their own checkpoints, restarts and records)
that the sampler and pruner never see: a branch measures its trunk, it is not a point.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Optional

import schedules
from runner.strategy import DONE, WAIT, Fork, NewTrial, Next, OptunaStrategy, Prune, Resume, \
    SweepView, TrialView

if TYPE_CHECKING:
    import optuna

    from runner.config import SweepConfig

HALVING = ("asha", "successive_halving", "hyperband")
ENDED = ("complete", "pruned", "failed")


def rungs(config: "SweepConfig") -> list[int]:
    """The steps below the full budget where a trial may be scored: ``fidelity.rungs``, else the
    successive-halving pruner's (min_resource * reduction_factor ** k; hyperband's brackets
    each take those from min_resource * reduction_factor ** bracket on)."""
    if config.fidelity.rungs is not None:
        return list(config.fidelity.rungs)
    pruner, out = config.pruner, []
    if pruner.kind in HALVING and isinstance(pruner.min_resource, int):
        step = pruner.min_resource
        while step < config.budget.steps:
            out.append(step)
            step *= pruner.reduction_factor
    return out


def config_problem(config: "SweepConfig") -> Optional[str]:
    """``key: what was expected`` for a config that cooldown fidelity cannot run, or None."""
    fidelity, pruner, budget = config.fidelity, config.pruner, config.budget
    if config.search.strategy != "optuna":
        return (f"fidelity.kind: cooldown works with search.strategy optuna, got "
                f"{config.search.strategy!r}")
    if config.objectives_count > 1:
        return "fidelity.kind: cooldown expects one objective (a branch scores its trunk by it)"
    if pruner.kind in HALVING and fidelity.rungs is not None:
        return (f"fidelity.rungs: expected none with pruner {pruner.kind} (its rungs are "
                f"min_resource * reduction_factor ** k)")
    if pruner.kind in ("asha", "successive_halving") and pruner.max_resource != "auto":
        return (f"pruner.max_resource: not used by {pruner.kind} (its rungs are min_resource * "
                f"reduction_factor ** k below budget.steps); leave it out")
    if pruner.kind in HALVING and not isinstance(pruner.min_resource, int):
        return ("pruner.min_resource: expected a number of steps with fidelity.kind cooldown "
                "(the first rung; Optuna's 'auto', the default, would pick it from the first "
                "trial's reports)")
    if pruner.kind not in HALVING and fidelity.rungs is None:
        return (f"fidelity.rungs: expected the steps to score trials at (pruner {pruner.kind} "
                f"defines none)")
    missing = [name for name in fidelity.schedules if name not in config.hyperparams]
    if missing:
        return (f"fidelity.schedules: {missing[0]!r} is not a key of hyperparams (have: "
                f"{', '.join(config.hyperparams) or 'none'})")
    stateful = [name for name in fidelity.schedules
                if "reduce_on_plateau" in _kinds(config.hyperparams[name])]
    if stateful:
        return (f"hyperparams.{stateful[0]}: a reduce_on_plateau schedule cannot be cooled down "
                f"(its value follows the metrics, not the step); expected a schedule of steps "
                f"with fidelity.kind cooldown, or leave it out of fidelity.schedules")
    for name in fidelity.schedules:
        for length in _wsd_lengths(config.hyperparams[name]):
            if length != budget.steps:
                return (f"hyperparams.{name}: a wsd of {length} steps (warmup + stable + decay) "
                        f"with budget.steps {budget.steps}: expected its length to be the "
                        f"budget, so that its cooldown ends the trunk and scales to each rung")
    steps = rungs(config)
    key = "fidelity.rungs" if fidelity.rungs is not None else "pruner.min_resource"
    for rung in steps:
        if rung >= budget.steps:
            return (f"fidelity.rungs: expected steps below budget.steps ({budget.steps}), got "
                    f"{rung} (the full budget is the last rung: the trunk's own end)")
        if rung % budget.report_every:
            return (f"{key}: rung {rung}: expected a multiple of budget.report_every "
                    f"({budget.report_every}): a trial is scored at a report")
    if not steps:
        return (f"pruner.min_resource: expected fewer than budget.steps ({budget.steps}) "
                f"steps, got {pruner.min_resource} (no rung to score trials at)")
    return None


def _options(value: Any) -> list[dict]:
    """Every schedule spec a hyperparam's value may take (its choices expanded)."""
    if isinstance(value, dict) and "choice" in value:
        return [spec for option in value["choice"] for spec in _options(option)]
    return [value] if isinstance(value, dict) else []


def _kinds(value: Any) -> set[str]:
    """Every schedule kind a hyperparam's value (its choices included) may take."""
    return {spec.get("kind") for spec in _options(value)}


def _wsd_lengths(value: Any) -> list[int]:
    """The lengths of a hyperparam's wsd specs (its choices included) whose phases are numbers;
    sampled phases are not known before a trial."""
    phases = [[spec.get(k, 0) for k in ("warmup_steps", "stable_steps", "decay_steps")]
              for spec in _options(value) if spec.get("kind") == "wsd"]
    return [sum(p) for p in phases if all(isinstance(x, int) for x in p)]


def _cooldown_of(spec: Any, rung: int, fraction: float, decay_type: str) -> tuple[int, dict]:
    """Where one schedule's cooldown to ``rung`` starts, and the schedule with it."""
    data = schedules.as_schedule(spec).spec()
    if data["kind"] == "wsd":  # its own cooldown, scaled to the rung
        length = data["warmup_steps"] + data["stable_steps"] + data["decay_steps"]
        fraction, decay_type = data["decay_steps"] / length, data["decay_type"]
    # at least step 1: a trunk has no checkpoint before it trained (a cooldown share near 1)
    start = max(1, rung - max(1, round(fraction * rung)))
    return start, schedules.cooldown(data, start, rung, decay_type)


def branch(config: "SweepConfig", specs: dict, rung: int) -> tuple[int, dict]:
    """The step a trunk with ``specs`` forks its branch for ``rung`` from, and the branch's
    schedules (those not in ``fidelity.schedules`` go on unchanged)."""
    fidelity, out, starts = config.fidelity, dict(specs), []
    for name in fidelity.schedules:
        start, out[name] = _cooldown_of(specs[name], rung, fidelity.fraction, fidelity.decay_type)
        starts.append(start)
    return min(starts), out


def trunk_specs(config: "SweepConfig", specs: dict) -> dict:
    """A new trial's schedules: each cooled-down one ends in its cooldown to the full budget
    (a wsd has it already); this is also the schedule of a standalone run of the trial."""
    steps, out = config.budget.steps, dict(specs)
    for name in config.fidelity.schedules:
        if schedules.as_schedule(specs[name]).kind != "wsd":
            out[name] = _cooldown_of(specs[name], steps, config.fidelity.fraction,
                                     config.fidelity.decay_type)[1]
    return out


def _bracket(study: "optuna.Study", number: int) -> int:
    """The hyperband bracket Optuna's HyperbandPruner puts trial ``number`` in (its own
    assignment, a hash of the study name and the number, so the rungs a trunk is scored at are
    those the pruner will judge it by)."""
    pruner = study.pruner
    if not pruner._pruners:  # private, as is the assignment: used, not copied (prune() too
        pruner._try_initialization(study)  # initializes once, on its first call)
    return pruner._get_bracket_id(study, SimpleNamespace(number=number))


def rung_of(trial: TrialView) -> Optional[int]:
    """The rung a branch scores its trunk at; None for a trunk."""
    return (trial.parent or {}).get("rung")


class CooldownFidelity(OptunaStrategy):
    """The Optuna strategy with every rung score a cooldown branch's result (``fidelity``).

    A trunk that reaches a rung before its branch has finished pauses there (its worker goes to
    other work) and goes on, or is pruned, once the branch's result is in. Every decision is
    read from the trials themselves, so a resumed driver continues without any saved state.
    """

    decides_at_reports = True
    tells_reports = False  # the study's intermediate values are the branches' results

    def __init__(self, config: "SweepConfig", study: "optuna.Study") -> None:
        super().__init__(config, study)
        self.decides_at_reports = True
        self._rungs = rungs(config)
        self.metric = config.objectives[0].metric
        self._branches: dict[tuple[int, int], tuple[int, dict]] = {}  # (trunk, rung) -> plan

    def plan_schedules(self, specs: dict) -> dict:
        return trunk_specs(self.config, specs)

    def rungs_of(self, number: int) -> list[int]:
        """The rungs trunk ``number`` is scored at: all of them, or its hyperband bracket's."""
        if self.config.pruner.kind != "hyperband":
            return self._rungs
        pruner = self.config.pruner
        first = pruner.min_resource * pruner.reduction_factor ** _bracket(self.study, number)
        return [rung for rung in self._rungs if rung >= first]

    def checkpoint_steps(self, number: int, specs: dict) -> list[int]:
        if any(name not in specs for name in self.config.fidelity.schedules):
            return []  # a trial rejected before it had schedules
        return sorted({branch(self.config, specs, rung)[0] for rung in self.rungs_of(number)})

    def report_problem(self, number: int, step: int, metrics: dict[str, float]) -> Optional[str]:
        if step not in self.rungs_of(number) or self.metric in metrics:
            return None
        storage = self.study._storage
        frozen = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, number))
        if not frozen.user_attrs.get("parent"):  # a trunk, not a branch or a user's fork
            return (f"fidelity.kind cooldown: trial {number} reported no {self.metric!r} at rung "
                    f"{step} (it reported {', '.join(sorted(metrics)) or 'nothing'}); a trial is "
                    f"scored at every rung: report the objective there")
        return None

    def next(self, sweep: SweepView) -> Next:
        trials = sweep.trials
        branches = {(t.parent["trial"], rung_of(t)): t for t in trials.values()
                    if rung_of(t) is not None}
        for trunk in sorted(trials.values(), key=lambda t: t.number):
            if trunk.parent is not None or trunk.state in ENDED:
                continue  # a branch, or a fork the user made: it runs to its own end
            for rung in self.rungs_of(trunk.number):
                scored = branches.get((trunk.number, rung))
                if scored is None:
                    key = (trunk.number, rung)  # next() is asked at every event: plan once
                    if key not in self._branches:
                        self._branches[key] = branch(self.config, trunk.schedules, rung)
                    at, specs = self._branches[key]
                    if trunk.checkpoint_step >= at:
                        return Fork(trunk.number, at, specs, steps=rung, rung=rung)
                    break
                if scored.state in ENDED and trunk.state == "paused" and \
                        trunk.checkpoint_step == rung:
                    prune = self._prunes(trunk.number, rung, scored.values.get(self.metric))
                    return Prune(trunk.number) if prune else Resume(trunk.number)
                if scored.state not in ENDED or trunk.step < rung:
                    break  # a later rung's branch waits for this rung's verdict
        sampled = sum(t.parent is None for t in trials.values())
        if sampled < self.config.search.n_trials:
            return NewTrial(limit=self.config.search.n_trials)
        alive = any(t.state not in ENDED for t in trials.values())
        return WAIT if alive else DONE

    def decide(self, trial: TrialView, step: int, metrics: dict[str, float]) -> str:
        """At a rung: the pruner's verdict on its branch's score, or a pause until the branch
        has run (next() then resumes or prunes the trunk). A rung passed unscored (a trunk the
        user resumed past it) is scored at the first report after its branch has finished."""
        due = [rung for rung in self.rungs_of(trial.number) if rung <= step]
        if trial.parent is not None or not due:  # a branch, or a user's fork: never scored
            return "continue"
        trials = self.study.get_trials(deepcopy=False)
        scored = set(next(t for t in trials if t.number == trial.number).intermediate_values)
        branches = {t.user_attrs["parent"]["rung"]: t for t in trials
                    if (t.user_attrs.get("parent") or {}).get("trial") == trial.number
                    and t.user_attrs["parent"].get("rung") is not None}
        for rung in (r for r in due if r not in scored):
            got = branches.get(rung)
            if got is None or not got.state.is_finished():
                if rung == step:
                    return "pause"
                continue
            if self._prunes(trial.number, rung, got.values[0] if got.values else None):
                return "prune"
        return "continue"

    def _prunes(self, number: int, rung: int, value: Optional[float]) -> bool:
        """Record the branch's result as the trunk's value at ``rung``; the pruner's verdict.
        A branch that did not complete prunes its trunk: it found no finished run there."""
        if value is None:
            return True
        from runner.study import without_branches

        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        storage.set_trial_intermediate_value(trial_id, rung, value)
        return self.study.pruner.prune(without_branches(self.study), storage.get_trial(trial_id))
