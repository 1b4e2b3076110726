"""User strategies loaded by import path (``search.strategy: tests.strategies:Class``)."""

from __future__ import annotations

import os
from typing import Optional

from runner.strategy import DONE, WAIT, Fork, NewTrial, Resume, Strategy, StrategyOptions


class RepechageOptions(StrategyOptions):
    initial: int = 2
    pause_at: Optional[int] = None  # trial 0 pauses at this report until another trial is done


class Repechage(Strategy):
    """Run ``initial`` trials, then fork the best one from its latest checkpoint (its schedule
    kept). Everything it has done is in its state, so a resumed driver neither starts more
    trials nor forks twice."""

    Options = RepechageOptions
    decides_at_reports = True

    def __init__(self, config, study):
        super().__init__(config, study)
        self.started, self.paused, self.resumed, self.forked = 0, [], [], []

    def next(self, sweep):
        if self.started < self.options.initial:
            self.started += 1
            return NewTrial()
        trials = sweep.trials
        for number in self.paused:
            others_done = any(t.state == "complete" for n, t in trials.items() if n != number)
            if number not in self.resumed and others_done:
                self.resumed.append(number)
                return Resume(number)
        if self.forked:
            return DONE
        if sweep.running() or any(t.state == "paused" for t in trials.values()):
            return WAIT
        done = [t for t in trials.values() if t.state == "complete"]
        best = min(done, key=lambda t: t.values["val_loss"])
        at = max(s for s in sweep.checkpoints(best.number) if s < self.config.budget.steps)
        self.forked.append(best.number)
        return Fork(best.number, at, best.schedules)

    def decide(self, trial, step, metrics):
        if trial.number == 0 and step == self.options.pause_at and 0 not in self.paused:
            self.paused.append(0)
            return "pause"
        return "continue"

    def state_dict(self):
        return {"started": self.started, "paused": self.paused, "resumed": self.resumed,
                "forked": self.forked}

    def load_state_dict(self, state):
        self.started, self.forked = state["started"], state["forked"]
        self.paused, self.resumed = state["paused"], state["resumed"]


class Raises(Strategy):
    """Starts one trial, then raises: a bug in a user's strategy."""

    def next(self, sweep):
        if not sweep.trials:
            return NewTrial()
        raise ZeroDivisionError("division by zero in my strategy")


class RaisesAtStart(Strategy):
    """Its constructor raises: a mistake found before anything runs."""

    def __init__(self, config, study):
        raise ValueError("population must be even")


class ForksAPast(Strategy):
    """Forks trial 0 with a different warmup: the child would not continue its parent's past."""

    def next(self, sweep):
        if not sweep.trials:
            return NewTrial()
        if sweep.running():
            return WAIT
        specs = dict(sweep.trials[0].schedules)
        specs["learning_rate"] = {**specs["learning_rate"], "warmup_steps": 3}
        return Fork(0, 100, specs)


class NotAStrategy:
    pass


class PausesForever(Strategy):
    """Two trials; trial 0 paused at its report of step 50, never resumed: the strategy ends."""

    decides_at_reports = True

    def next(self, sweep):
        return NewTrial() if len(sweep.trials) < 2 else DONE

    def decide(self, trial, step, metrics):
        return "pause" if trial.number == 0 and step == 50 else "continue"


class ForksOnce(Strategy):
    """Like the README's BestTwice: marks the fork done before answering it; the fork drops a
    schedule while the environment says so (a bug the user then fixes)."""

    def __init__(self, config, study):
        super().__init__(config, study)
        self.forked = False

    def next(self, sweep):
        if not sweep.trials:
            return NewTrial()
        if self.forked:
            return DONE
        if sweep.running():
            return WAIT
        self.forked = True
        specs = dict(sweep.trials[0].schedules)
        if os.environ.get("SWEEP_TEST_BREAK_FORK"):
            specs.pop("b1")
        return Fork(0, 100, specs)

    def state_dict(self):
        return {"forked": self.forked}

    def load_state_dict(self, state):
        self.forked = state["forked"]
