"""Paced trainables for the recovery benchmark (tests/bench/test_bench_recovery.py).

The same small job in two forms, this runner's ``train(ctx)`` and a Ray Tune function trainable:
one AdamW update of the digits MLP (``examples.digits_torch``'s model and data) per step, padded
with a sleep to a fixed ``step_s`` per step, so a lost step costs a known time whatever the
machine's load, and both systems import the same libraries (torch, sklearn) when a worker starts.
Importable by Ray workers as ``tests.bench.recovery_trainables`` (repo root on PYTHONPATH).
"""

from __future__ import annotations

import os
import tempfile
import time


def _pace(started: float, step_s: float) -> None:
    left = started + step_s - time.monotonic()
    if left > 0:
        time.sleep(left)


def runner_paced(ctx) -> None:
    """This runner: ``examples.digits_torch:train`` with each step padded to ``params.step_s``.

    The first report of each incarnation also carries ``t_entered`` / ``t_ready`` (wall clock:
    the trainable called; imports, data, model and restore done) for the benchmark's breakdown.
    """
    entered = time.time()
    import torch
    import torch.nn.functional as F
    from torch import nn

    import schedules.torch
    from examples.data import batch_indices, digits

    x_train, y_train, x_val, y_val = (torch.from_numpy(a) for a in digits())
    width = int(ctx.params.get("width", 32))
    step_s = float(ctx.params.get("step_s", 0.05))
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = schedules.torch.attach(optimizer, **ctx.schedules)
    ctx.track(model=model, optimizer=optimizer, scheduler=scheduler)
    timing = {"t_entered": entered, "t_ready": time.time()}

    for step in ctx.steps():
        started = time.monotonic()
        index = torch.from_numpy(batch_indices(ctx.seed, step, 64, len(x_train)))
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ctx.report_due(step):
            with torch.no_grad():
                val_loss = F.cross_entropy(model(x_val), y_val).item()
            ctx.report(step + 1, loss=loss.item(), val_loss=val_loss, **timing)
            timing = {}
        _pace(started, step_s)


def tune_paced(config: dict) -> None:
    """Ray Tune: the same job; checkpoints (model, optimizer, step, RNG) every
    ``config["checkpoint_every"]`` steps through ``tune.report(..., checkpoint=...)``, restores
    from ``tune.get_checkpoint()`` after a failure, reports every step with where it runs (and
    ``t_entered`` / ``t_ready`` as ``runner_paced`` does)."""
    entered = time.time()
    import ray
    import torch
    import torch.nn.functional as F
    from ray import tune
    from torch import nn

    from examples.data import batch_indices, digits

    x_train, y_train, x_val, y_val = (torch.from_numpy(a) for a in digits())
    steps, every = int(config["steps"]), int(config["checkpoint_every"])
    step_s, seed = float(config["step_s"]), int(config.get("seed", 0))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, int(config["width"])), nn.ReLU(),
                          nn.Linear(int(config["width"]), 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config["lr"]))
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, "state.pt"), weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = int(state["step"])
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
             "start_step": start, "t_entered": entered, "t_ready": time.time()}

    for step in range(start, steps):
        started = time.monotonic()
        index = torch.from_numpy(batch_indices(seed, step, 64, len(x_train)))
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done = step + 1
        with torch.no_grad():
            val_loss = F.cross_entropy(model(x_val), y_val).item()
        metrics = dict(where, step=done, loss=loss.item(), val_loss=val_loss)
        if done % every == 0 and done < steps:
            with tempfile.TemporaryDirectory() as directory:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "rng": torch.get_rng_state(), "step": done},
                           os.path.join(directory, "state.pt"))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)
        _pace(started, step_s)
