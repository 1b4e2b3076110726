"""A PyTorch trainable: an MLP on digits, AdamW driven by the sweep's schedules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import schedules.torch
from examples.data import batch_indices, digits
from runner.context import TrialContext


def make_model(width: int = 64) -> nn.Module:
    """The MLP, also for loading a trial's final checkpoint back (see README)."""
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def train(ctx: TrialContext) -> None:
    x_train, y_train, x_val, y_val = (torch.from_numpy(a) for a in digits())
    width = int(ctx.params.get("width", 64))
    batch_size = int(ctx.params.get("batch_size", 64))
    model = make_model(width)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = schedules.torch.attach(optimizer, **ctx.schedules)
    ctx.track(model=model, optimizer=optimizer, scheduler=scheduler)

    for step in ctx.steps():
        index = torch.from_numpy(batch_indices(ctx.seed, step, batch_size, len(x_train)))
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ctx.report_due(step):
            with torch.no_grad():
                logits = model(x_val)
                val_loss = F.cross_entropy(logits, y_val).item()
                accuracy = (logits.argmax(1) == y_val).float().mean().item()
            ctx.report(step + 1, loss=loss.item(), val_loss=val_loss, val_accuracy=accuracy)
