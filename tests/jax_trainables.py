"""A JAX trainable on plain optax (no schedules.optax): the runner must not need the injection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from runner.context import TrialContext


def plain_optax(ctx: TrialContext) -> None:
    optimizer = optax.adam(1e-2)
    params = {"w": jnp.ones(3)}
    state = ctx.track_pytree({"params": params, "opt_state": optimizer.init(params)},
                             lambda: state)
    loss_fn = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
    for step in ctx.steps():
        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        state = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}
        if ctx.report_due(step):
            ctx.report(step + 1, loss=float(loss))
