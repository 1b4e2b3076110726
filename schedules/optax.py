"""optax adapter: schedules injected by ``optax.inject_hyperparams``, and their checkpoint records.

    >>> import optax, schedules.optax
    >>> opt = schedules.optax.inject(optax.adamw, learning_rate={"kind": "warmup_cosine_decay",
    ...     "init_value": 0.0, "peak_value": 3e-3, "warmup_steps": 100, "decay_steps": 1000},
    ...     weight_decay=1e-4)

The result is plain optax: its state is an ``InjectStatefulHyperparamsState`` whose
``hyperparams_states`` holds one position per scheduled hyperparameter, so a checkpoint must keep
the whole state (not only ``count``): rebuild the optimizer from the specs, ``init`` a template and
restore every leaf into it. This is the only module of ``schedules`` that imports JAX.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from schedules import ReduceOnPlateau, Schedule, as_schedule

__all__ = ["RECORDS_FORMAT", "inject", "schedule_records"]

RECORDS_FORMAT = "sweep.schedules/1"

# The float dtype optax gives numeric hyperparameters in the running init/update (hyperparam_dtype,
# else the params' highest): scheduled values take it too, so a bf16 or float32-under-x64 model
# keeps stable state dtypes whatever is scheduled. Read at trace time, hence jit-safe.
_DTYPE: ContextVar[Any] = ContextVar("schedules_optax_dtype", default=None)


@contextlib.contextmanager
def _hyperparam_dtype(dtype: Any) -> Iterator[None]:
    token = _DTYPE.set(dtype)
    try:
        yield
    finally:
        _DTYPE.reset(token)


def _cast(value: Any) -> jax.Array:
    return jnp.asarray(value, _DTYPE.get())


class _PlateauSchedule:
    """``ReduceOnPlateau`` as an optax ``StatefulSchedule``; the metric is the extra arg ``value``.

    ``value`` is the name ``optax.contrib.reduce_on_plateau`` uses; a NaN ``value`` means no
    measurement this update. The state is a dict of JAX scalars, so it jits and checkpoints as is.
    """

    def __init__(self, schedule: ReduceOnPlateau):
        self.schedule = schedule

    def init(self) -> dict[str, jax.Array]:
        return {k: jnp.asarray(v, jnp.int32 if isinstance(v, int) else float)
                for k, v in self.schedule.init_state().items()}

    def update(self, state: dict[str, jax.Array], *, value: Any = None, **extra_args: Any
               ) -> dict[str, jax.Array]:
        del extra_args
        if value is None:
            raise TypeError("reduce_on_plateau reads its metric from the update's extra arg "
                            "`value`: opt.update(grads, state, params, value=metric); pass NaN "
                            "when there is no measurement")
        metric = jnp.asarray(value, state["value"].dtype)
        return self.schedule.update(state, metric, jnp)

    def __call__(self, state: dict[str, jax.Array], **extra_args: Any) -> jax.Array:
        del extra_args
        return _cast(self.schedule.value_of(state))


def _is_spec(value: Any) -> bool:
    return isinstance(value, Schedule) or (isinstance(value, Mapping) and "kind" in value)


def _injectable(schedule: Schedule) -> Callable[..., Any]:
    if isinstance(schedule, ReduceOnPlateau):
        return _PlateauSchedule(schedule)
    return lambda count: _cast(schedule.value(count, jnp))


def _check_names(factory: Callable[..., Any], signature: inspect.Signature,
                 kwargs: Mapping[str, Any]) -> None:
    """Refuse a keyword the factory does not take, naming the closest one it does.

    ``Signature.bind`` would say only "unexpected keyword argument", and a misspelt name in a
    sweep config fails every trial alike, so the likely intended name is worth spelling out.
    """
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    names = [n for n, p in signature.parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for name in kwargs:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
            hint = f"did you mean {close[0]!r}? " if close else ""
            inner = getattr(factory, "func", factory)  # a functools.partial names its function
            label = getattr(inner, "__name__", type(inner).__name__)
            raise TypeError(f"hyperparameter {name!r}: {label} has no parameter {name!r} "
                            f"({hint}parameters: {', '.join(names)})")


def inject(factory: Callable[..., optax.GradientTransformation], /, *args: Any,
           static_args: str | Iterable[str] = (),
           hyperparam_dtype: jax.typing.DTypeLike | None = None,
           **kwargs: Any) -> optax.GradientTransformationExtraArgs:
    """``optax.inject_hyperparams(factory)(...)`` where any argument may be a Schedule or a spec.

    Schedules and specs are injected (a ``reduce_on_plateau`` reads the metric from the update's
    extra arg ``value``); plain numbers stay numbers, so they remain overridable through
    ``state.hyperparams`` as optax documents; other callables (a ``mask`` function, a dtype) are
    passed through untouched instead of being mistaken for schedules.
    """
    signature = inspect.signature(factory)
    _check_names(factory, signature, kwargs)
    bound = signature.bind(*args, **kwargs)
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    for name, value in bound.arguments.items():
        if name in static:
            continue
        if _is_spec(value):
            bound.arguments[name] = _injectable(as_schedule(value))
        elif callable(value):
            static.add(name)
    inner = optax.inject_hyperparams(factory, static_args=static,
                                     hyperparam_dtype=hyperparam_dtype)(*bound.args, **bound.kwargs)

    def dtype_for(params: Any) -> Any:
        return optax.tree.dtype(params, "highest") if hyperparam_dtype is None else hyperparam_dtype

    def init(params: Any) -> optax.OptState:
        with _hyperparam_dtype(dtype_for(params)):
            return inner.init(params)

    def update(updates: Any, state: optax.OptState, params: Any = None, **extra_args: Any
               ) -> tuple[Any, optax.OptState]:
        with _hyperparam_dtype(dtype_for(params)):
            return inner.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init, update)


def _plain(x: Any) -> int | float:
    array = np.asarray(x)
    return int(array) if np.issubdtype(array.dtype, np.integer) else float(array)


def schedule_records(opt_state: Any, specs: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule part of a checkpoint as plain data (what the Arrow store writes as typed rows).

    ``opt_state`` is any optax state holding exactly one ``InjectStatefulHyperparamsState``
    (possibly inside a chain); ``specs`` maps each hyperparameter to the Schedule, spec or number
    it was built with. A hyperparameter given as a plain number has no schedule position: its
    ``state`` is ``{}`` and its ``value`` the current, possibly overridden, number.
    """
    found = [leaf for leaf in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.InjectStatefulHyperparamsState))
        if isinstance(leaf, optax.InjectStatefulHyperparamsState)]
    if len(found) != 1:
        raise ValueError(f"opt_state: expected exactly one InjectStatefulHyperparamsState, "
                         f"found {len(found)}")
    state = found[0]
    missing = sorted(set(state.hyperparams_states) - set(specs))
    if missing:
        raise ValueError(f"specs: no spec for scheduled hyperparameters {missing}")
    rows = []
    for name, spec in specs.items():
        schedule = as_schedule(spec)
        if name not in state.hyperparams:
            raise ValueError(f"specs.{name}: not a hyperparameter of this optimizer "
                             f"(expected one of {sorted(state.hyperparams)})")
        position = state.hyperparams_states.get(name)
        if position is None and not _is_spec(spec):
            plain_state = {}
        elif schedule.stateful and isinstance(position, dict):
            plain_state = {k: _plain(v) for k, v in position.items()}
        elif not schedule.stateful and hasattr(position, "count"):
            plain_state = {"count": _plain(position.count)}
        else:
            raise ValueError(f"specs.{name}: a {schedule.spec()['kind']} spec does not match the "
                             f"state this optimizer holds for it ({type(position).__name__})")
        rows.append({"group": 0, "name": name, "key": name, "spec": schedule.spec(),
                     "state": plain_state, "value": float(state.hyperparams[name])})
    return {"format": RECORDS_FORMAT, "last_epoch": _plain(state.count), "hyperparams": rows}
