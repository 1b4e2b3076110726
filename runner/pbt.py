"""Population Based Training (Jaderberg et al. 2017) as a strategy, in synchronous generations.

Every member trains to the generation's step (a multiple of ``interval_steps``, never seconds)
and pauses there, checkpointed at exactly that step. When all have, the bottom ``quantile``
each exploit a member of the top ``quantile`` (drawn with the seed): they go on from its
checkpoint, with its schedules explored from that step on (numeric fields perturbed by
``perturb_factors`` or, with ``resample_probability``, drawn again from the config's
distributions). A member's effective schedule is one absolute ``join``: what it followed
until each exploit and what it follows after. Every decision is a function of the seed and of
the metrics at the generation steps, so the outcome does not depend on timing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Optional

import numpy as np
from pydantic import Field

import schedules
from runner.space import DISTRIBUTIONS, Suggest, declares_distribution, sample, to_schedule
from runner.strategy import (DONE, WAIT, Exploit, NewTrial, Next, Resume, Strategy,
                             StrategyOptions, SweepView, TrialView)

if TYPE_CHECKING:
    import optuna

    from runner.config import SweepConfig

ALIVE = ("queued", "running", "handing_over", "lost", "paused", "user_paused", "stopped")


class PBTOptions(StrategyOptions):
    population: int = Field(default=8, ge=2)
    interval_steps: int = Field(ge=1)
    quantile: float = Field(default=0.25, gt=0, le=0.5)
    resample_probability: float = Field(default=0.25, ge=0, le=1)
    perturb_factors: list[Annotated[float, Field(gt=0)]] = Field(default=[0.8, 1.2],
                                                                 min_length=1)


class PBT(Strategy):
    """``search: {strategy: pbt, population: 8, interval_steps: 50, quantile: 0.25,
    resample_probability: 0.25, perturb_factors: [0.8, 1.2], seed: 0}``."""

    Options = PBTOptions
    decides_at_reports = True

    def __init__(self, config: "SweepConfig", study: "optuna.Study") -> None:
        super().__init__(config, study)
        self.seed = config.search.seed or 0
        self.sign = 1.0 if config.objectives[0].direction == "minimize" else -1.0
        self.started = 0
        self.generation = 0  # members train towards (generation + 1) * interval_steps
        self.scores: dict[str, dict[str, float]] = {}  # member -> generation step -> metric
        self.points: dict[str, dict[str, Any]] = {}  # member -> its hyperparameters' point now
        self.plans: dict[str, list[dict]] = {}  # generation -> the exploits decided for it

    @classmethod
    def check(cls, config: "SweepConfig") -> None:
        interval = config.search.strategy_options.get("interval_steps")
        every = config.budget.report_every
        if isinstance(interval, int) and interval % every:
            raise ValueError(f"search.interval_steps: expected a multiple of budget.report_every "
                             f"({every}), got {interval}")
        if isinstance(interval, int) and interval >= config.budget.steps:
            raise ValueError(f"search.interval_steps: expected fewer than budget.steps "
                             f"({config.budget.steps}), got {interval} (no generation would "
                             f"turn: nothing would be exploited)")
        if not declares_distribution(config.hyperparams):
            raise ValueError(f"hyperparams: expected at least one distribution "
                             f"({', '.join(DISTRIBUTIONS)}) for search.strategy pbt to explore "
                             f"(params are the donor's, never explored)")
        if config.search.n_trials is not None:
            raise ValueError("search.n_trials: not used with search.strategy pbt (the "
                             "population is the number of trials: search.population)")
        if config.pruner.kind != "none":
            raise ValueError("pruner.kind: expected none with search.strategy pbt (the bottom "
                             "members exploit the top ones instead of being pruned)")
        if config.objectives_count > 1:
            raise ValueError("objective: expected one objective with search.strategy pbt")

    # --- Strategy ------------------------------------------------------------------------

    def next(self, sweep: SweepView) -> Next:
        if self.started < self.options.population:
            self.started += 1
            return NewTrial()
        members = {n: t for n, t in sweep.trials.items() if t.parent is None}
        alive = {n: t for n, t in members.items() if t.state in ALIVE}
        if not alive:
            return DONE
        step = (self.generation + 1) * self.options.interval_steps
        if step >= self.config.budget.steps:
            return WAIT  # the last generation runs to the end of the budget
        if str(self.generation) not in self.plans:  # plan once every member is at the step
            if not all(t.state == "paused" and t.checkpoint_step == step for t in alive.values()):
                return WAIT
            self.plans[str(self.generation)] = self._plan(alive, step)
        plan = self.plans[str(self.generation)]
        for exploit in plan:  # done once the member follows the planned schedules
            if members[exploit["member"]].schedules != exploit["specs"]:
                return Exploit(exploit["member"], exploit["donor"], step, exploit["specs"],
                               self.generation)
        for number in sorted(alive):  # then each member paused at the step goes on
            if alive[number].state == "paused" and alive[number].checkpoint_step == step:
                return Resume(number)
        self.generation += 1  # every member is on its way to the next step: plan it at once
        del self.plans[str(self.generation - 1)]  # carried out: the saved state stays small
        return self.next(sweep)  # (with one slot, nothing else would ask)

    def decide(self, trial: TrialView, step: int, metrics: dict[str, float]) -> str:
        interval, budget = self.options.interval_steps, self.config.budget.steps
        if trial.parent is not None or step % interval or step >= budget:
            return "continue"
        value = metrics[self.config.objectives[0].metric]
        self.scores.setdefault(str(trial.number), {})[str(step)] = value
        self.points.setdefault(str(trial.number), dict(trial.point))
        return "pause"

    def state_dict(self) -> dict[str, Any]:
        return {"started": self.started, "generation": self.generation, "scores": self.scores,
                "points": self.points, "plans": self.plans}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.started, self.generation = state["started"], state["generation"]
        self.scores, self.points, self.plans = state["scores"], state["points"], state["plans"]

    # --- exploit and explore (pure functions of the seed, the scores and the points) -----------

    def _plan(self, alive: dict[int, TrialView], step: int) -> list[dict]:
        """Which members exploit whom at ``step``, and the schedules they follow from there."""
        def rank(number: int) -> tuple:
            value = self.scores[str(number)][str(step)]
            return (math.isnan(value), self.sign * value if not math.isnan(value) else 0.0, number)

        ordered = sorted(alive, key=rank)
        count = min(len(ordered) // 2, math.ceil(len(ordered) * self.options.quantile))
        if count == 0:
            return []
        top, bottom = ordered[:count], ordered[-count:]
        rng = np.random.default_rng([self.seed, self.generation])
        plan = []
        for member in sorted(bottom):
            donor = top[int(rng.integers(len(top)))]
            point, specs = self._explore(alive[donor], rng, step)
            self.points[str(member)] = point
            plan.append({"member": member, "donor": donor, "specs": specs})
        return plan

    def _explore(self, donor: TrialView, rng: np.random.Generator,
                 step: int) -> tuple[dict, dict]:
        """The donor's point explored, and the effective schedules that continue the donor's
        with it from ``step`` on; a hyperparameter whose explored schedule is invalid keeps the
        donor's."""
        base = self.points.get(str(donor.number), donor.point)
        point, specs = dict(base), {}
        for name, value in self.config.hyperparams.items():
            path = f"hyperparams.{name}"
            explore = _Explore(base, rng, self.options)
            try:
                tail = to_schedule(sample(value, path, explore), path).spec()
            except schedules.ScheduleError:
                tail = None
            if tail is not None:
                point.update(explore.drawn)
            specs[name] = _continued(donor.schedules[name], tail, step)
        return point, specs


class _Explore(Suggest):
    """Draws a member's new point from the donor's: each numeric value perturbed by a factor or,
    with the resample probability, drawn again; a categorical one kept or drawn again."""

    def __init__(self, point: dict[str, Any], rng: np.random.Generator,
                 options: PBTOptions) -> None:
        self.point, self.rng, self.options = point, rng, options
        self.drawn: dict[str, Any] = {}

    def _resample(self, name: str) -> bool:
        return name not in self.point or self.rng.random() < self.options.resample_probability

    def categorical(self, name: str, options: list) -> Any:
        value = self.point.get(name)
        if self._resample(name) or value not in options:
            value = options[int(self.rng.integers(len(options)))]
        self.drawn[name] = value
        return value

    def float(self, name: str, low: float, high: float, *, log: bool) -> float:
        if self._resample(name):
            value = float(np.exp(self.rng.uniform(np.log(low), np.log(high))) if log
                          else self.rng.uniform(low, high))
        else:
            factors = self.options.perturb_factors
            value = float(self.point[name]) * factors[int(self.rng.integers(len(factors)))]
        self.drawn[name] = value = min(max(value, low), high)
        return value

    def int(self, name: str, low: int, high: int, *, step: int, log: bool) -> int:
        if self._resample(name):
            value = low + step * int(self.rng.integers((high - low) // step + 1))
        else:
            factors = self.options.perturb_factors
            scaled = float(self.point[name]) * factors[int(self.rng.integers(len(factors)))]
            value = low + step * round((scaled - low) / step)
        self.drawn[name] = value = int(min(max(value, low), high))
        return value


def _continued(spec: dict, tail: Optional[dict], step: int) -> dict:
    """``spec`` until ``step``, then ``tail`` on its own timeline, as one absolute join."""
    segments, boundaries = [spec], []
    if spec["kind"] == "join" and spec.get("absolute"):
        segments, boundaries = list(spec["schedules"]), list(spec["boundaries"])
    if tail is None or tail == segments[-1]:
        return spec
    return schedules.from_spec({"kind": "join", "absolute": True, "schedules": segments + [tail],
                                "boundaries": boundaries + [step]}).spec()
