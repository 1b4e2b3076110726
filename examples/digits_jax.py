"""A JAX/optax trainable: the same MLP and task, optax.adamw with injected schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import schedules.optax
from examples.data import batch_indices, digits
from runner.context import TrialContext


def _init(key: jax.Array, width: int) -> dict:
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (64, width)) * (1 / 8.0), "b1": jnp.zeros(width),
            "w2": jax.random.normal(k2, (width, 10)) * (1 / jnp.sqrt(width)), "b2": jnp.zeros(10)}


def _logits(params: dict, x: jax.Array) -> jax.Array:
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


def _loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y).mean()


def train(ctx: TrialContext) -> None:
    x_train, y_train, x_val, y_val = digits()
    width = int(ctx.params.get("width", 64))
    batch_size = int(ctx.params.get("batch_size", 64))
    optimizer = schedules.optax.inject(optax.adamw, **ctx.schedules)

    @jax.jit
    def update(state, x, y):
        loss, grads = jax.value_and_grad(_loss)(state["params"], x, y)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss

    params = _init(jax.random.PRNGKey(ctx.seed % (2**31)), width)
    state = {"params": params, "opt_state": optimizer.init(params)}
    state = ctx.track_pytree(state, lambda: state)

    for step in ctx.steps():
        index = batch_indices(ctx.seed, step, batch_size, len(x_train))
        state, loss = update(state, x_train[index], y_train[index])
        if ctx.report_due(step):
            logits = _logits(state["params"], x_val)
            val_loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, y_val).mean())
            accuracy = float((logits.argmax(1) == y_val).mean())
            ctx.report(step + 1, loss=float(loss), val_loss=val_loss, val_accuracy=accuracy)
