"""A trainable whose first attempt is killed while a background save is in flight.

Its own module, so that torch is imported (by examples.digits_torch) before the trial starts and
seeded like the baseline it is compared with; tests/trainables.py stays free of torch.
"""

from __future__ import annotations

import os
import signal
import threading

from examples.digits_torch import train
from runner.checkpoint import _store
from runner.context import TrialContext


def digits_save_held_at_40(ctx: TrialContext) -> None:
    """examples.digits_torch:train, but on the trial's first attempt the background save of step
    40 never completes: the worker is killed while that save is in flight."""
    marker = os.path.join(os.path.dirname(ctx.task.checkpoint_root), f"held-{ctx.number}")
    write = _store._write

    def held(fs, path, *args, **kwargs):
        if path.endswith("ckpt-000000040.arrow") and not os.path.exists(marker):
            open(marker, "w").close()
            threading.Event().wait()  # until the process is killed
        return write(fs, path, *args, **kwargs)

    _store._write = held
    try:
        train(ctx)
    finally:
        _store._write = write


def digits_report_lost_at_40(ctx: TrialContext) -> None:
    """examples.digits_torch:train, but on the trial's first attempt the report of step 40 never
    reaches the driver and the worker dies once the checkpoint of step 40 is durable."""
    marker = os.path.join(os.path.dirname(ctx.task.checkpoint_root), f"lost-{ctx.number}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        emit = ctx._emit

        def lossy(event: dict):
            if event["type"] == "report" and event["step"] == 40:
                return False  # lost in transit; the pruner's answer would have been "go on"
            if event["type"] == "checkpoint" and event["step"] == 40:
                os.kill(os.getpid(), signal.SIGKILL)
            return emit(event)

        ctx._emit = lossy
    train(ctx)


def digits_held_after_40(ctx: TrialContext) -> None:
    """examples.digits_torch:train, but on trial 0's first attempt it says so on stdout once its
    checkpoint of step 40 is durable, then never goes on: whoever kills the driver on that line
    kills it mid-trial."""
    marker = os.path.join(os.path.dirname(ctx.task.checkpoint_root), f"held-{ctx.number}")
    if ctx.number == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        emit = ctx._emit

        def held(event: dict):
            answer = emit(event)
            if event["type"] == "checkpoint" and event["step"] == 40:
                print("held after the checkpoint of step 40", flush=True)
                threading.Event().wait()
            return answer

        ctx._emit = held
    train(ctx)


def digits_fork_killed_at_150(ctx: TrialContext) -> None:
    """examples.digits_torch:train, but a fork's first attempt is killed -9 by its own worker
    when it reports step 150, between its checkpoints: the fork resumes from its own checkpoint."""
    marker = os.path.join(os.path.dirname(ctx.task.checkpoint_root), f"killed-{ctx.number}")
    if "parent" in ctx.task.metadata and not os.path.exists(marker):
        emit = ctx._emit

        def killed(event: dict):
            if event["type"] == "report" and event["step"] >= 150:
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return emit(event)

        ctx._emit = killed
    train(ctx)


def digits_held_once_after_40(ctx: TrialContext) -> None:
    """digits_held_after_40 for a trial that runs in several attempts (a PBT member pauses at
    every generation): trial 0 holds after its checkpoint of step 40, whichever attempt that is,
    once."""
    marker = os.path.join(os.path.dirname(ctx.task.checkpoint_root), f"held-{ctx.number}")
    if ctx.number == 0 and not os.path.exists(marker):
        emit = ctx._emit

        def held(event: dict):
            answer = emit(event)
            if event["type"] == "checkpoint" and event["step"] == 40:
                open(marker, "w").close()
                print("held after the checkpoint of step 40", flush=True)
                threading.Event().wait()
            return answer

        ctx._emit = held
    train(ctx)


def kill_the_driver_when_held(config_path, cwd) -> None:
    """``sweep run config_path`` with digits_held_after_40, kill -9 of the driver once trial 0
    holds after its checkpoint of step 40 (so mid-trial)."""
    import subprocess
    import sys

    driver = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(config_path)],
                              cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    for line in driver.stdout:
        if "held after the checkpoint of step 40" in line:
            break
    driver.kill()
    driver.wait()
