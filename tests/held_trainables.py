"""A trainable whose first attempt is killed while a background save is in flight.

Its own module, so that torch is imported (by examples.digits_torch) before the trial starts and
seeded like the baseline it is compared with; tests/trainables.py stays free of torch.
"""

from __future__ import annotations

import os
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
