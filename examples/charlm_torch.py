"""A PyTorch trainable: a small character-level transformer LM, AdamW driven by the schedules.

A decoder-only, pre-LayerNorm transformer (learned positional embeddings, causal self-attention,
untied output head, no dropout) on CPython's pydoc topics text (see ``examples/charlm_data.py``).
Reports ``loss`` (the batch's) and ``val_loss`` (on 32 fixed validation windows), both in nats per
character. Weight decay applies to the weight matrices and embeddings only (param group 0); biases
and LayerNorm parameters are in group 1, without decay.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import schedules.torch
from examples.charlm_data import batch_starts, splits, val_starts, vocab, windows
from runner.context import TrialContext

DEFAULTS: dict[str, int] = {"n_layer": 2, "d_model": 64, "n_head": 4, "context": 64,
                            "batch_size": 16}
CLIP = 1.0  # gradient norm clipping


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_head ({n_head})")
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class CharLM(nn.Module):
    def __init__(self, vocab_size: int, context: int, n_layer: int, d_model: int,
                 n_head: int) -> None:
        super().__init__()
        self.context = context
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(_init)
        for block in self.blocks:  # GPT-2: residual projections scaled by depth
            for proj in (block.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / (2 * n_layer) ** 0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``batch x time x vocab`` for token indices ``batch x time`` (time <= context)."""
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def make_model(n_layer: int = 2, d_model: int = 64, n_head: int = 4, context: int = 64,
               vocab_size: int | None = None, **_: Any) -> CharLM:
    """The model, also for loading a trial's final checkpoint back: ``make_model(**params)``
    (other params, such as ``batch_size``, are ignored)."""
    return CharLM(len(vocab()) if vocab_size is None else int(vocab_size), int(context),
                  int(n_layer), int(d_model), int(n_head))


def param_groups(model: nn.Module) -> list[dict]:
    """Group 0: matrices and embeddings (weight decay); group 1: biases and norms (none)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def update(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
           y: torch.Tensor) -> torch.Tensor:
    """One AdamW step on a batch, gradients clipped; the batch's loss (the benchmark's Ray Tune
    trainable takes the same step)."""
    loss = lm_loss(model, x, y)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    optimizer.step()
    return loss


def train(ctx: TrialContext) -> None:
    params = {**DEFAULTS, **ctx.params}
    context, batch_size = int(params["context"]), int(params["batch_size"])
    train_tokens, val_tokens = splits()
    x_val, y_val = (torch.from_numpy(a)
                    for a in windows(val_tokens, val_starts(context, len(val_tokens)), context))
    model = make_model(**params)  # initialised from torch's stream, seeded with ctx.seed
    optimizer = torch.optim.AdamW(param_groups(model))
    hyperparams = dict(ctx.schedules)
    if "weight_decay" in hyperparams:  # group 1 stays without decay
        hyperparams["weight_decay"] = [hyperparams["weight_decay"], 0.0]
    scheduler = schedules.torch.attach(optimizer, **hyperparams)
    ctx.track(model=model, optimizer=optimizer, scheduler=scheduler)

    for step in ctx.steps():
        starts = batch_starts(ctx.seed, step, batch_size, context, len(train_tokens))
        x, y = (torch.from_numpy(a) for a in windows(train_tokens, starts, context))
        loss = update(model, optimizer, x, y)
        scheduler.step()
        if ctx.report_due(step):
            with torch.no_grad():
                val_loss = lm_loss(model, x_val, y_val).item()
            ctx.report(step + 1, loss=loss.item(), val_loss=val_loss)
