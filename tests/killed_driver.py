"""``python -m tests.killed_driver WHEN sweep-args...``: the ``sweep`` CLI, but its driver kills
itself -9 at WHEN, between two writes that belong together (what a resumed driver must make
whole): ``KEY``, just after it first records the trial attribute KEY in the study, or
``checkpoint:N:STEP``, when it learns that trial N's checkpoint of STEP is durable, before it
records the reports that came before it."""

from __future__ import annotations

import os
import signal
import sys

import optuna

from runner import lifecycle
from runner.cli import main


def _die(why: str) -> None:
    print(f"killed {why}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _killed_after(key: str) -> None:
    set_user_attr = optuna.Trial.set_user_attr

    def set_then_die(trial: optuna.Trial, name: str, value) -> None:
        set_user_attr(trial, name, value)
        if name == key:
            _die(f"after {key}")

    optuna.Trial.set_user_attr = set_then_die


def _killed_at_checkpoint(number: int, step: int) -> None:
    on_durable = lifecycle.Lifecycle._on_CheckpointDurable

    def die_when_durable(life: lifecycle.Lifecycle, event, now: float):
        if life.number == number and event.step == step:
            _die(f"at the checkpoint of trial {number} at step {step}")
        return on_durable(life, event, now)

    lifecycle.Lifecycle._on_CheckpointDurable = die_when_durable


if __name__ == "__main__":
    when = sys.argv[1].split(":")
    if when[0] == "checkpoint":
        _killed_at_checkpoint(int(when[1]), int(when[2]))
    else:
        _killed_after(when[0])
    sys.exit(main(sys.argv[2:]))
