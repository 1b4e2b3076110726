"""Trivial trainables for the runner benchmark: they only report, so what is timed is overhead.

Importable by Ray workers as ``tests.bench.bench_trainables`` (the benchmark runs with the repo
root on PYTHONPATH). The same objective in three forms: this runner's ``train(ctx)``, a Ray Tune
function trainable and a plain Optuna objective. One sampled dimension, named as the runner
names it, so the TPE sampler sees the same space everywhere.
"""

from __future__ import annotations

import math
import time

PARAM = "hyperparams.learning_rate.value"  # the name runner.space gives the sampled constant
LOW, HIGH = 1e-6, 1.0


def _loss(lr: float, step: int) -> float:
    return (math.log10(lr) + 2.0) ** 2 + 1.0 / (step + 1)


def trivial(ctx) -> None:
    """This runner: reports ``loss`` every ``report_every`` steps and does nothing else."""
    lr = ctx.schedules["learning_rate"](0)
    for step in ctx.steps():
        if ctx.report_due(step):
            ctx.report(step + 1, loss=_loss(lr, step))


WAIT_S = 0.05


def waiting(ctx) -> None:
    """``trivial`` whose every step waits ``WAIT_S``: a stand-in for an accelerator's step, during
    which the CPU is idle, as it mostly is on a GPU node."""
    lr = ctx.schedules["learning_rate"](0)
    for step in ctx.steps():
        time.sleep(WAIT_S)
        if ctx.report_due(step):
            ctx.report(step + 1, loss=_loss(lr, step))


def flat(ctx) -> None:
    """Reports the same loss in every trial: a median pruner never prunes it, but still decides."""
    for step in ctx.steps():
        if ctx.report_due(step):
            ctx.report(step + 1, loss=1.0)


def tune_space(trial) -> dict:
    """Ray Tune's OptunaSearch define-by-run space: the same dimension, plus constants."""
    trial.suggest_float(PARAM, LOW, HIGH, log=True)
    return {"reports": 10}


def tune_trivial(config: dict) -> None:
    """Ray Tune function trainable: ``config["reports"]`` reports through ``tune.report``."""
    from ray import tune

    lr = config[PARAM]
    for step in range(config["reports"]):
        tune.report({"loss": _loss(lr, step)})


def optuna_objective(trial, reports: int = 10) -> float:
    """Plain Optuna: the same reports as intermediate values, the last one returned."""
    lr = trial.suggest_float(PARAM, LOW, HIGH, log=True)
    loss = math.inf
    for step in range(reports):
        loss = _loss(lr, step)
        trial.report(loss, step + 1)
    return loss
