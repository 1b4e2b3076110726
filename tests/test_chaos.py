"""Chaos: trial workers SIGKILLed again and again while six trials run two at a time.

Every kill lands on a report the worker is still waiting on (the pruner's answer), so it is
mid-trial by construction; the test checks each kill was seen as a lost worker. Afterwards
every trial is COMPLETE and its values, history and applied hyperparameters equal those of an
undisturbed twin, row for row; no trial runs beyond the budget.
"""

from __future__ import annotations

import os
import signal

import optuna
import pytest

from runner.config import parse_config
from runner.driver import Sweep
from tests.test_preemption import _data, _outcome

pytestmark = pytest.mark.usefixtures("ray_local")
KILLS = 6
EVERY = 4  # reports between kills (over all trials)


class Chaos:
    """Kills the reporting trial's worker on every EVERY-th report, KILLS times at most."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.pids: dict[int, int] = {}
        self.reports = 0
        self.killed: list[tuple[int, int]] = []  # (trial, step)
        self.lost: list[int] = []

    def __call__(self, kind: str, info: dict) -> None:
        number = info.get("number")
        if kind == "placed":
            self.pids[number] = info["pid"]
        elif kind == "requeued" and info["why"] == "lost":
            self.lost.append(number)
        elif kind == "report" and info["step"] < self.budget and number in self.pids:
            self.reports += 1
            if self.reports % EVERY == 0 and len(self.killed) < KILLS:
                os.kill(self.pids.pop(number), signal.SIGKILL)
                self.killed.append((number, info["step"]))


@pytest.mark.timeout(600)
def test_six_trials_under_repeated_worker_kills_equal_their_undisturbed_twins(tmp_path):
    def config(run_dir):
        return parse_config(_data(run_dir, "examples.digits_torch:train", n_trials=6,
                                  max_concurrent=2, max_restarts=KILLS,
                                  budget={"steps": 60, "report_every": 10,
                                          "checkpoint_every": 20}), "chaos.yaml")

    chaos = Chaos(budget=60)
    Sweep(config(tmp_path / "chaos"), on_event=chaos).run()
    Sweep(config(tmp_path / "twin")).run()
    assert len(chaos.killed) == KILLS
    assert sorted(chaos.lost) == sorted(number for number, _ in chaos.killed)
    history, applied, states, trials = _outcome(tmp_path / "chaos")
    assert (history, applied, states) == _outcome(tmp_path / "twin")[:3]
    assert set(states) == set(range(6)) and {s for s, _ in states.values()} == {"COMPLETE"}
    assert sum(t["lost"] for t in trials.values()) == KILLS
    study = optuna.load_study(study_name="exact", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "chaos" / "study.journal"))))
    assert len(study.trials) == 6
