"""``python -m tests.killed_driver KEY sweep-args...``: the ``sweep`` CLI, but its driver kills
itself -9 just after it first records the trial attribute KEY in the study (a kill between two
writes that belong together: what a resumed driver must make whole)."""

from __future__ import annotations

import os
import signal
import sys

import optuna

from runner.cli import main


def _killed_after(key: str) -> None:
    set_user_attr = optuna.Trial.set_user_attr

    def set_then_die(trial: optuna.Trial, name: str, value) -> None:
        set_user_attr(trial, name, value)
        if name == key:
            print(f"killed after {key}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    optuna.Trial.set_user_attr = set_then_die


if __name__ == "__main__":
    _killed_after(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
