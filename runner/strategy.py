"""Search strategies: what to run next and what to do at each report, behind one small class.

A strategy is told about trials (``decide`` at a report, ``finished`` at the end) and answers
with plain actions: start a new trial, fork one from a checkpoint, resume a paused one, wait,
or stop starting; at a report: continue, prune or pause. The driver carries the actions out
through each trial's lifecycle, so every strategy gets the same restarts, checkpoints and
records. Like an Optuna sampler or pruner, a strategy is one class with a few methods; its
``state_dict`` is saved in the study after every call that changes it, so ``sweep resume``
continues the strategy where it stood, even after the driver was killed.

    class ForkBest(Strategy):
        def next(self, sweep):
            ...
            return NewTrial()  # or Fork(parent=3, step=40, specs={...}), WAIT, DONE

``search.strategy`` names one: ``optuna`` (the default: the config's sampler and pruner), or a
class by import path, ``package.module:Class``. Keys of ``search`` beyond the common ones are the
strategy's options, validated by its ``Options`` model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import optuna

    from runner.config import SweepConfig


@dataclass(frozen=True)
class NewTrial:
    """Ask the study for a new trial; ``params`` fixes some of its parameters (Optuna's enqueue).
    ``limit``: only while the study holds fewer sampled (not forked) trials, counted and asked
    under one lock, so drivers sharing a study stop at exactly ``limit``."""

    params: dict = field(default_factory=dict)
    limit: Optional[int] = None


@dataclass(frozen=True)
class Fork:
    """A new trial continuing ``parent`` from its checkpoint at ``step`` with ``specs`` (which
    must agree with the parent's schedules before ``step``); ``steps``: a new budget. ``rung``:
    a cooldown branch that scores its parent there, which the sampler and pruner never see."""

    parent: int
    step: int
    specs: dict
    steps: Optional[int] = None
    rung: Optional[int] = None


@dataclass(frozen=True)
class Exploit:
    """Paused ``trial`` goes on from ``donor``'s checkpoint at ``step`` (weights, optimizer and
    schedule state, RNG streams, data order) with ``specs``, which must agree with the donor's
    before ``step``; its params become the donor's. Recorded in the lineage table."""

    trial: int
    donor: int
    step: int
    specs: dict
    generation: Optional[int] = None


@dataclass(frozen=True)
class Resume:
    """Continue a trial the strategy paused (state "paused") from its last checkpoint."""

    trial: int


@dataclass(frozen=True)
class Prune:
    """End a trial the strategy paused as pruned, where it stands."""

    trial: int


WAIT = "wait"  # nothing to start now; ask again when a trial reports, finishes or frees a slot
DONE = "done"  # nothing more to start in this sweep
Next = Union[NewTrial, Fork, Exploit, Resume, Prune, Literal["wait", "done"]]
Decision = Literal["continue", "prune", "pause"]


@dataclass(frozen=True)
class TrialView:
    """What a strategy sees of one trial: plain data, a snapshot."""

    number: int
    # a lifecycle state (queued, running, paused: by the strategy, complete, pruned, failed,
    # ...) or user_paused: paused by request, it waits for the user's sweep resume
    state: str
    params: dict
    schedules: dict
    values: dict  # objective metric -> final value (complete trials)
    step: int  # the last step it reported
    checkpoint_step: int  # the step its last durable checkpoint holds
    parent: Optional[dict]  # a fork's lineage: trial, step, checkpoint, digest
    point: dict = field(default_factory=dict)  # the sampled Optuna parameters (none for a fork)


class SweepView:
    """The sweep as a strategy sees it when asked what to run next: every trial of the study
    (also those earlier drivers ran), the free slots, and where checkpoints are."""

    def __init__(self, trials: Callable[[], dict[int, TrialView]], free_slots: int,
                 checkpoints: Callable[[int], list[int]]) -> None:
        self._trials = trials
        self.free_slots = free_slots  # trials that could start now
        self.checkpoints = checkpoints  # a trial's checkpoint steps (lists storage: it costs)

    @cached_property
    def trials(self) -> dict[int, TrialView]:
        return self._trials()

    def running(self) -> list[TrialView]:
        return [t for t in self.trials.values() if t.state in ("running", "handing_over")]


class Strategy:
    """The base class: override ``next`` (and ``decide``, ``finished``, the state pair as
    needed). ``decides_at_reports``: workers wait for ``decide`` at every report of the first
    objective (a strategy that never prunes or pauses leaves it False: trials run unblocked).
    ``tells_reports``: the study records each report of the objective as an intermediate value
    (False: the strategy records the values its pruner decides on itself)."""

    Options: ClassVar[Optional[type[BaseModel]]] = None
    decides_at_reports: bool = False
    tells_reports: bool = True

    def __init__(self, config: "SweepConfig", study: "optuna.Study") -> None:
        self.config, self.study = config, study
        self.options = self.Options.model_validate(config.search.strategy_options) \
            if self.Options is not None else None

    @classmethod
    def check(cls, config: "SweepConfig") -> None:
        """Raise ValueError(``key: what was expected``) for a config this strategy cannot run."""

    def next(self, sweep: SweepView) -> Next:
        """What to start now that a slot is free."""
        raise NotImplementedError

    def decide(self, trial: TrialView, step: int, metrics: dict[str, float]) -> Decision:
        """A trial reported ``metrics`` at ``step``: go on, prune it, or pause it there."""
        return "continue"

    def finished(self, trial: TrialView) -> None:
        """A trial completed, was pruned or failed."""

    def plan_schedules(self, specs: dict) -> dict:
        """The schedules a new trial follows, given those its sampled point makes."""
        return specs

    def checkpoint_steps(self, number: int, specs: dict) -> list[int]:
        """Steps trial ``number`` with ``specs`` checkpoints at and keeps: where this strategy
        forks."""
        return []

    def report_problem(self, number: int, step: int, metrics: dict[str, float]) -> Optional[str]:
        """Why this strategy cannot use a trial's report (the sweep stops, resumable), or None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data that ``load_state_dict`` continues from (saved in the study)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict`` a previous driver saved."""


class OptunaStrategy(Strategy):
    """Today's behaviour: the config's Optuna sampler proposes ``n_trials`` trials, its pruner
    decides at each report. Optuna keeps all the state in the study itself."""

    def __init__(self, config: "SweepConfig", study: "optuna.Study") -> None:
        super().__init__(config, study)
        self.decides_at_reports = config.pruner.kind != "none"

    def next(self, sweep: SweepView) -> Next:
        return NewTrial(limit=self.config.search.n_trials)

    def decide(self, trial: TrialView, step: int, metrics: dict[str, float]) -> Decision:
        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id,
                                                                   trial.number)
        prune = self.study.pruner.prune(self.study, storage.get_trial(trial_id))
        return "prune" if prune else "continue"


class StrategyOptions(BaseModel):
    """A base for a strategy's ``Options``: strict like the rest of the config."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


from runner.pbt import PBT  # noqa: E402  (a built-in strategy is a file on this base class)

BUILTIN: dict[str, type[Strategy]] = {"optuna": OptunaStrategy, "pbt": PBT}


def strategy_class(name: str) -> type[Strategy]:
    """A built-in strategy by name, or a Strategy subclass by ``package.module:Class``; raises
    ImportError or TypeError with a message fit for one line."""
    if name in BUILTIN:
        return BUILTIN[name]
    from runner.context import resolve_class

    return resolve_class(name, Strategy)
