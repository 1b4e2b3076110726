"""Tiny trainables for the runner tests: fast, deterministic, each showing one behaviour."""

from __future__ import annotations

import math
import random

import numpy as np

from runner.context import TrialContext


class Tally:
    """The smallest tracked state (``state_dict``/``load_state_dict``): a trial that declares it
    checkpoints and resumes mid-run; one that declares nothing starts over on resume."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])


def quadratic(ctx: TrialContext) -> None:
    """Loss decays towards (log10(peak lr) + 2)^2: trials far from 1e-2 are clearly worse."""
    peak = float(ctx.schedules["learning_rate"].values(0, ctx.steps_total).max())
    target = (math.log10(peak) + 2.0) ** 2
    ctx.track(tally=Tally())
    for step in ctx.steps():
        if ctx.report_due(step):
            loss = target + 1.0 / (step + 1) + 1e-3 * random.random()
            ctx.report(step + 1, loss=loss)


def stateless_until_fixed(ctx: TrialContext) -> None:
    """Declares its state only once the file ``params['fixed']`` exists: a trainable its user
    fixes between runs. Its loss follows the learning rate applied at each step."""
    import os

    if os.path.exists(ctx.params["fixed"]):
        ctx.track(tally=Tally())
    for step in ctx.steps():
        if ctx.report_due(step):
            lr = float(ctx.schedules["learning_rate"](step))
            ctx.report(step + 1, loss=(math.log10(lr) + 2.0) ** 2 + 1.0 / (step + 1))


def flaky(ctx: TrialContext) -> None:
    """Fails when the sampled 'explode' param is true, otherwise behaves like quadratic."""
    if ctx.params["explode"]:
        raise RuntimeError("the loss exploded")
    quadratic(ctx)


def counting(ctx: TrialContext) -> None:
    """Reports a deterministic function of the trial's RNG streams and schedule values."""
    total = 0.0
    for step in ctx.steps():
        total += np.random.random() + random.random() + ctx.schedules["learning_rate"](step)
        if ctx.report_due(step):
            ctx.report(step + 1, loss=total / (step + 1))


def fails_once(ctx: TrialContext) -> None:
    """Raises on a trial's first attempt (a marker file remembers it), then trains normally."""
    import os

    marker = os.path.join(ctx.params["marker_dir"], f"attempted-{ctx.number}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    quadratic(ctx)


def claimed_midway(ctx: TrialContext) -> None:
    """After its first checkpoint, another writer claims the trial's checkpoint directory, as the
    replacement of a worker written off by the driver would."""
    from runner.checkpoint import CheckpointStore

    ctx.track(tally=Tally())
    for step in ctx.steps():
        if step == ctx.task.checkpoint_every + 1:
            CheckpointStore(ctx.task.checkpoint_root, owner="the replacement")
        if ctx.report_due(step):
            ctx.report(step + 1, loss=1.0)


def valley(ctx: TrialContext) -> None:
    """Loss is lowest a little before halfway through the budget: the best checkpoint is not the
    newest."""
    middle = 0.45 * ctx.steps_total
    ctx.track(tally=Tally())
    for step in ctx.steps():
        if ctx.report_due(step):
            ctx.report(step + 1, loss=abs(step + 1 - middle))



def dies_if_first(ctx: TrialContext) -> None:
    """Trial 0's process dies (as if OOM-killed) at step 5 of every attempt; others are quadratic."""
    import os
    import signal

    if ctx.number != 0:
        return quadratic(ctx)
    ctx.track(tally=Tally())
    for step in ctx.steps():
        if step == 5:
            os.kill(os.getpid(), signal.SIGKILL)


def typo(ctx: TrialContext) -> None:
    """Always fails alike, as a misspelt key does."""
    raise KeyError("learnin_rate")


def fails_once_midway(ctx: TrialContext) -> None:
    """Raises on its first attempt two steps past its first checkpoint (a marker file remembers
    it): a retry resumes from that checkpoint and redoes the reports made since, identically."""
    import os

    import torch

    import schedules.torch

    marker = os.path.join(ctx.params["marker_dir"], f"attempted-{ctx.number}")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)])
    scheduler = schedules.torch.attach(optimizer, **ctx.schedules)  # applied values get reported
    ctx.track(optimizer=optimizer, scheduler=scheduler)
    for step in ctx.steps():
        if step == ctx.task.checkpoint_every + 2 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        if ctx.report_due(step):
            ctx.report(step + 1, loss=lr + 1.0 / (step + 1), val_loss=lr * (step + 1))


def two_metrics(ctx: TrialContext) -> None:
    """Two objectives that pull apart: loss falls with a higher lr, cost rises with it."""
    lr = float(ctx.schedules["learning_rate"](0))
    ctx.track(tally=Tally())
    for step in ctx.steps():
        if ctx.report_due(step):
            ctx.report(step + 1, loss=1.0 / (1.0 + 100 * lr), cost=lr)


def objective_at_the_end(ctx: TrialContext) -> None:
    """Reports ``loss`` only at the last step (``seen`` at every report): a trainable that
    cannot be scored at a rung."""
    ctx.track(tally=Tally())
    for step in ctx.steps():
        if ctx.report_due(step):
            metrics = {"seen": float(step)}
            if step + 1 == ctx.steps_total:
                metrics["loss"] = 1.0 / (step + 1)
            ctx.report(step + 1, **metrics)
