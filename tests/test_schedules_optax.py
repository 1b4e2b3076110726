"""The optax side: parity with optax's own schedules, the inject adapter, and exact resume."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schedules
import schedules.optax as so
from tests.spec_strategies import Ranges, joins, stateless_specs

N_STEPS = 3000  # every schedule below ends before this, so the tail after the end is compared too

# --- random specs for every kind optax has, in the ranges an optimizer hyperparameter takes -------

VALUE = st.just(0.0) | st.floats(1e-6, 10.0) | st.floats(-10.0, -1e-6)  # representable in float32
STEPS = st.integers(0, 2000)
FEW_STEPS = st.integers(1, 40)  # where integer truncation of fractions of a length shows
RANGES = Ranges(
    value=VALUE, steps=STEPS, lengths=FEW_STEPS | st.integers(1, 2000),
    warmup=st.integers(0, 1000), decay_span=1500,
    # Below 0.5, cosine_decay's float32 cancellation of 1 + cos(x) near its end outgrows float32 noise.
    exponent=st.floats(0.5, 5.0), alpha=st.floats(-1.0, 2.0),
    rate=st.floats(0.01, 1.0) | st.floats(1.0, 2.0, exclude_min=True),
    positive=st.floats(1e-6, 10.0), div_factor=st.floats(1.0, 100.0),
    final_div_factor=st.floats(1.0, 1e5), pct_start=st.floats(0.05, 0.95),
    linear_pct=(0.05, 0.6, 0.05, 0.95),
    scales=st.dictionaries(st.integers(0, 2500).map(str), st.floats(0.0, 3.0), max_size=5),
    join_bound=2500)
# The kinds optax has (wsd and cyclic are this library's own; reduce_on_plateau is tested apart).
SPECS = {name: strategy for name, strategy in stateless_specs(RANGES).items()
         if name not in ("wsd", "cyclic")}
SPECS["join"] = joins(st.one_of(list(SPECS.values())), RANGES)


def optax_schedule(spec: dict):
    """optax's own function for a spec: same kind, same argument names."""
    kind, args = spec["kind"], {k: v for k, v in spec.items() if k != "kind"}
    if kind == "constant":
        return optax.constant_schedule(args["value"])
    if kind == "join":
        return optax.join_schedules([optax_schedule(s) for s in args["schedules"]],
                                    args["boundaries"])
    if "boundaries_and_scales" in args:
        args["boundaries_and_scales"] = {int(k): v
                                         for k, v in args["boundaries_and_scales"].items()}
    function = optax.exponential_decay if kind == "exponential_decay" else getattr(
        optax, f"{kind}_schedule")
    return function(**args)


# --- parity ---------------------------------------------------------------------------------------

# float32's unit roundoff is 6e-8; the formulas amplify it: a rate's rounding is raised to powers
# up to N_STEPS (3000 * 6e-8 = 1.8e-4), 1 + cos(x) cancels near the end of a cosine, and
# (init - end) * frac + end cancels where the value is small next to init or end. Within 2e-4 of
# the peak magnitude (of the values, or of the values the spec names) plus 1e-5 of the value is
# float32 agreement; an off-by-one step, a NaN or a wrong branch differs by far more.
F32_RTOL, F32_ATOL = 1e-5, 2e-4


def _magnitude(spec: dict) -> float:
    """The largest value a spec names: the scale of its formulas' intermediate terms."""
    parts = spec.get("schedules", []) + spec.get("cosine_kwargs", [])
    named = [abs(spec.get(k) or 0.0) for k in ("value", "init_value", "peak_value", "end_value")]
    return max(named + [_magnitude(part) for part in parts])


def _check_against_optax(spec: dict) -> None:
    schedule = schedules.from_spec(spec)
    ours = schedule.values(0, N_STEPS)
    with jax.enable_x64(True):
        reference = optax_schedule(spec)
        theirs = np.array(jax.vmap(reference)(jnp.arange(N_STEPS)))
        assert theirs.dtype == np.float64
        peak = max(np.abs(theirs).max(), _magnitude(spec), 1e-300)
        # Compiled, XLA may multiply by a constant's reciprocal instead of dividing by it, which
        # moves optax's own staircase a step late (transition_steps=249: 249 * (1/249) < 1; at
        # most 39 such steps in 3000 for any length up to 2000). Where the vectorised reference
        # disagrees at a few steps, optax is evaluated there op by op, as written.
        for step in np.flatnonzero(~np.isclose(ours, theirs, rtol=1e-6, atol=1e-6 * peak))[:100]:
            theirs[step] = reference(int(step))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * peak)

    jitted = np.asarray(jax.jit(lambda count: schedule.value(count, jnp))(
        jnp.arange(N_STEPS, dtype=jnp.int32)))
    assert jitted.dtype == np.float32
    np.testing.assert_allclose(np.broadcast_to(jitted, ours.shape), ours,
                               rtol=F32_RTOL, atol=F32_ATOL * peak)


@pytest.mark.parametrize("kind", sorted(SPECS))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_equals_optax_and_the_jitted_float32_path(kind, data):
    _check_against_optax(data.draw(SPECS[kind]))


EDGES = [  # where a length's integer parts, a boundary step or the end of a decay decide the value
    {"kind": "linear_onecycle", "transition_steps": 1, "peak_value": 1.0},
    {"kind": "linear_onecycle", "transition_steps": 13, "peak_value": 1.0, "pct_start": 0.47,
     "pct_final": 0.52},
    {"kind": "cosine_onecycle", "transition_steps": 1, "peak_value": 1.0},
    {"kind": "polynomial", "init_value": 1.0, "end_value": 0.0, "power": 0.5,
     "transition_steps": 3},
    {"kind": "linear", "init_value": 1.0, "end_value": 1.0, "transition_steps": 0},
    {"kind": "exponential_decay", "init_value": 1.0, "transition_steps": 115, "decay_rate": 0.5,
     "staircase": True},
    {"kind": "exponential_decay", "init_value": 0.5, "transition_steps": 249, "decay_rate": 2.0,
     "staircase": True, "end_value": 1.0},
    {"kind": "exponential_decay", "init_value": 1.0, "transition_steps": 7, "decay_rate": 0.5,
     "transition_begin": 2000, "end_value": 0.1},
    {"kind": "piecewise_interpolate", "interpolate_type": "cosine", "init_value": 1.0,
     "boundaries_and_scales": {"0": 2.0, "1": 0.5, "2500": 0.0}},
    {"kind": "piecewise_constant", "init_value": 1.0, "boundaries_and_scales": {"0": 0.5}},
    {"kind": "join", "schedules": [{"kind": "constant", "value": 1.0}] * 3, "boundaries": [0, 1]},
]


@pytest.mark.parametrize("spec", EDGES, ids=lambda spec: spec["kind"])
def test_equals_optax_at_the_edges(spec):
    _check_against_optax(spec)


# --- the inject adapter ---------------------------------------------------------------------------

WARMUP_COSINE = {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 3e-2,
                 "warmup_steps": 100, "decay_steps": 1000, "end_value": 1e-4}
B1_RAMP = {"kind": "linear", "init_value": 0.85, "end_value": 0.95, "transition_steps": 600}
WD_COSINE = {"kind": "cosine_decay", "init_value": 1e-2, "decay_steps": 800, "alpha": 0.1}
PLATEAU = {"kind": "reduce_on_plateau", "init_value": 0.1, "factor": 0.5, "patience": 2,
           "cooldown": 1, "min_value": 1e-3}
KINDS_THROUGH_JIT = [
    WARMUP_COSINE, B1_RAMP, WD_COSINE,
    {"kind": "wsd", "peak_value": 1e-2, "warmup_steps": 20, "stable_steps": 100, "decay_steps": 50,
     "decay_type": "1-sqrt"},
    {"kind": "cyclic", "base_value": 1e-3, "max_value": 1e-2, "step_size_up": 30,
     "mode": "triangular2"},
    {"kind": "join", "schedules": [{"kind": "constant", "value": 0.05}, B1_RAMP],
     "boundaries": [50]},
    {"kind": "sgdr", "cosine_kwargs": [{"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 10,
                                        "decay_steps": 90}] * 3},
]
ONES = jnp.ones(3, jnp.float32)


def _sgd_lrs(opt, n: int):
    """Learning rates held by state.hyperparams and applied (update = -lr * 1), per update."""
    def body(state, _):
        updates, state = opt.update(ONES, state, ONES)
        return state, (state.hyperparams["learning_rate"], updates[0])
    return jax.jit(lambda state: jax.lax.scan(body, state, None, length=n))(opt.init(ONES))


@pytest.mark.parametrize("spec", KINDS_THROUGH_JIT, ids=lambda spec: spec["kind"])
def test_values_applied_inside_jit_follow_the_schedule(spec):
    schedule = schedules.from_spec(spec)
    _, (held, applied) = _sgd_lrs(so.inject(optax.sgd, learning_rate=spec), 300)
    expected = schedule.values(0, 300)
    np.testing.assert_allclose(held, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(applied, -held)


def test_two_schedules_and_a_constant_in_adamw():
    opt = so.inject(optax.adamw, learning_rate=WARMUP_COSINE, b1=B1_RAMP, weight_decay=1e-4)
    state, params = opt.init(ONES), ONES
    step = jax.jit(opt.update)
    for k in range(5):
        _, state = step(ONES, state, params)
        assert state.hyperparams["learning_rate"] == pytest.approx(
            schedules.from_spec(WARMUP_COSINE)(k), rel=1e-5)
        assert state.hyperparams["b1"] == pytest.approx(schedules.from_spec(B1_RAMP)(k), rel=1e-5)
        assert state.hyperparams["weight_decay"] == pytest.approx(1e-4)
    assert sorted(state.hyperparams_states) == ["b1", "learning_rate"]


def test_plain_numbers_stay_overridable_and_schedules_stay_in_charge():
    opt = so.inject(optax.sgd, learning_rate=0.1)
    state = opt.init(ONES)
    state.hyperparams["learning_rate"] = jnp.asarray(0.05)
    updates, state = jax.jit(opt.update)(ONES, state, ONES)
    np.testing.assert_allclose(updates, -0.05 * ONES)

    scheduled = so.inject(optax.sgd, learning_rate={"kind": "constant", "value": 0.1})
    state = scheduled.init(ONES)
    state.hyperparams["learning_rate"] = jnp.asarray(0.05)
    updates, _ = jax.jit(scheduled.update)(ONES, state, ONES)
    np.testing.assert_allclose(updates, -0.1 * ONES)


def test_non_schedule_arguments_pass_through():
    """A mask function and a dtype (both callables) and a flag reach the factory untouched."""
    params = {"w": jnp.full((2, 2), 0.5), "b": jnp.full((2,), 0.5)}
    def mask(tree):
        return jax.tree.map(lambda x: x.ndim > 1, tree)
    ours = so.inject(optax.adamw, 1e-2, weight_decay=0.1, mask=mask, mu_dtype=jnp.bfloat16)
    theirs = optax.inject_hyperparams(optax.adamw, static_args=("mask", "mu_dtype"))(
        1e-2, weight_decay=0.1, mask=mask, mu_dtype=jnp.bfloat16)
    ours_state, their_state = ours.init(params), theirs.init(params)
    for _ in range(3):
        ours_updates, ours_state = ours.update(params, ours_state, params)
        their_updates, their_state = theirs.update(params, their_state, params)
        jax.tree.map(np.testing.assert_array_equal, ours_updates, their_updates)
    assert ours_state.inner_state[0].mu["w"].dtype == jnp.bfloat16

    def two_updates(opt):
        state = opt.init(ONES)
        for _ in range(2):
            updates, state = opt.update(ONES, state, ONES)
        return updates
    nesterov = two_updates(so.inject(optax.sgd, learning_rate=0.1, momentum=0.9, nesterov=True))
    np.testing.assert_array_equal(nesterov, two_updates(optax.inject_hyperparams(optax.sgd)(
        learning_rate=0.1, momentum=0.9, nesterov=True)))
    assert not np.array_equal(nesterov, two_updates(so.inject(optax.sgd, 0.1, momentum=0.9)))


def test_a_bad_spec_fails_when_building():
    with pytest.raises(schedules.ScheduleError, match="decay_steps"):
        so.inject(optax.adamw, learning_rate={**WARMUP_COSINE, "decay_steps": 50})


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_hyperparam_dtype_is_honoured(dtype):
    opt = so.inject(optax.adamw, learning_rate=WARMUP_COSINE, b1=PLATEAU, weight_decay=1e-4,
                    hyperparam_dtype=dtype)
    state = opt.init(ONES)
    step = jax.jit(lambda state: opt.update(ONES, state, ONES, value=1.0)[1])
    for k in range(3):
        state = step(state)
        assert {v.dtype for v in state.hyperparams.values()} == {jnp.dtype(dtype)}
        assert float(state.hyperparams["learning_rate"]) == pytest.approx(
            schedules.from_spec(WARMUP_COSINE)(k), rel=max(2 * float(jnp.finfo(dtype).eps), 1e-5))
    assert state.hyperparams_states["b1"]["value"].dtype == jnp.float32  # its state keeps precision


def test_without_hyperparam_dtype_scheduled_values_follow_the_params_like_constants():
    params = jnp.ones(4, jnp.bfloat16)
    opt = so.inject(optax.adamw, learning_rate=WARMUP_COSINE, b1=B1_RAMP, weight_decay=1e-4)

    def body(state, _):  # lax.scan demands a carry whose dtypes do not change
        _, state = opt.update(params, state, params)
        return state, None
    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=3))(opt.init(params))
    assert {v.dtype for v in state.hyperparams.values()} == {jnp.dtype(jnp.bfloat16)}
    assert state.inner_state[0].mu.dtype == jnp.bfloat16

    with jax.enable_x64(True):
        state = opt.init(jnp.ones(4, jnp.float32))
        assert {v.dtype for v in state.hyperparams.values()} == {jnp.dtype(jnp.float32)}


# --- reduce_on_plateau through extra args ---------------------------------------------------------

PLATEAU_SPECS = st.fixed_dictionaries(
    {"kind": st.just("reduce_on_plateau"), "init_value": st.floats(1e-4, 1.0)},
    optional={"mode": st.sampled_from(["min", "max"]), "factor": st.floats(0.05, 0.95),
              "patience": st.integers(0, 8), "threshold": st.floats(0.0, 0.1),
              "threshold_mode": st.sampled_from(["rel", "abs"]), "cooldown": st.integers(0, 4),
              "min_value": st.floats(0.0, 1e-3)})
# No subnormal metrics: XLA on CPU flushes them to zero, numpy does not.
METRICS = st.lists(st.floats(-5.0, 5.0, allow_subnormal=False) | st.just(float("nan")),
                   min_size=1, max_size=120)


def _numpy_plateau(schedule, metrics):
    """The values the numpy path applies per update, and its final state."""
    state, applied = schedule.init_state(), []
    for metric in metrics:
        applied.append(schedule.value_of(state))
        state = schedule.update(state, metric)
    return np.asarray(applied, dtype=np.float64), state


def _jax_plateau(spec, metrics, dtype):
    opt = so.inject(optax.sgd, learning_rate=spec)
    params = jnp.ones(3, dtype)

    def body(state, metric):
        updates, state = opt.update(params, state, params, value=metric)
        return state, (state.hyperparams["learning_rate"], updates[0])
    run = jax.jit(lambda state, ms: jax.lax.scan(body, state, ms))
    state, (held, applied) = run(opt.init(params), jnp.asarray(metrics, dtype))
    return state, np.asarray(held), np.asarray(applied)


@settings(max_examples=25, deadline=None)
@given(spec=PLATEAU_SPECS, metrics=METRICS)
def test_reduce_on_plateau_fed_through_extra_args_reduces_like_the_numpy_path(spec, metrics):
    schedule = schedules.from_spec(spec)
    expected, expected_state = _numpy_plateau(schedule, metrics)
    with jax.enable_x64(True):
        state, held, applied = _jax_plateau(spec, metrics, jnp.float64)
    np.testing.assert_array_equal(held, expected)
    np.testing.assert_array_equal(applied, -expected)
    final = so.schedule_records(state, {"learning_rate": spec})["hyperparams"][0]["state"]
    assert final == {k: type(final[k])(v) for k, v in expected_state.items()}


def test_reduce_on_plateau_in_float32():
    spec = {**PLATEAU, "patience": 1, "cooldown": 0}
    metrics = [1.0, 0.5, 0.5, 0.5, float("nan"), 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    expected, _ = _numpy_plateau(schedules.from_spec(spec), metrics)
    state, held, _ = _jax_plateau(spec, metrics, jnp.float32)
    assert held.dtype == np.float32
    np.testing.assert_allclose(held, expected, rtol=1e-6)
    assert sorted(set(held.tolist()), reverse=True) == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert {k: v.dtype for k, v in state.hyperparams_states["learning_rate"].items()} == {
        "value": jnp.float32, "best": jnp.float32, "num_bad": jnp.int32,
        "cooldown_counter": jnp.int32, "count": jnp.int32}


def test_reduce_on_plateau_needs_the_value_extra_arg():
    opt = so.inject(optax.sgd, learning_rate=PLATEAU)
    with pytest.raises(TypeError, match="value"):
        opt.update(ONES, opt.init(ONES), ONES)


# --- checkpoint records ---------------------------------------------------------------------------

def test_schedule_records_format():
    specs = {"learning_rate": WARMUP_COSINE, "b1": PLATEAU, "weight_decay": 1e-4}
    opt = optax.chain(optax.clip_by_global_norm(1.0), so.inject(optax.adamw, **specs))
    state = opt.init(ONES)
    step = jax.jit(lambda state, metric: opt.update(ONES, state, ONES, value=metric)[1])
    for metric in [3.0, 2.0, 2.5, float("nan"), 2.5]:
        state = step(state, metric)
    records = so.schedule_records(state, specs)
    assert records == {
        "format": "sweep.schedules/1",
        "last_epoch": 5,
        "hyperparams": [
            {"group": 0, "name": "learning_rate", "key": "learning_rate",
             "spec": schedules.from_spec(WARMUP_COSINE).spec(), "state": {"count": 5},
             "value": pytest.approx(schedules.from_spec(WARMUP_COSINE)(4), rel=1e-6)},
            {"group": 0, "name": "b1", "key": "b1",
             "spec": schedules.from_spec(PLATEAU).spec(),
             "state": {"value": pytest.approx(0.1), "best": 2.0, "num_bad": 2,
                       "cooldown_counter": 0, "count": 4},
             "value": pytest.approx(0.1)},
            {"group": 0, "name": "weight_decay", "key": "weight_decay",
             "spec": {"kind": "constant", "value": 1e-4}, "state": {},
             "value": pytest.approx(1e-4)},
        ],
    }
    plain = json.loads(json.dumps(records, allow_nan=False))
    assert plain["hyperparams"][1]["state"]["num_bad"] == 2
    counts = [plain["last_epoch"], *plain["hyperparams"][0]["state"].values()]
    assert all(type(count) is int for count in counts)


@pytest.mark.parametrize("state, specs, field", [
    (optax.adamw(1e-3).init(ONES), {"learning_rate": 1e-3}, "opt_state"),
    (so.inject(optax.adamw, learning_rate=WARMUP_COSINE).init(ONES), {}, "specs"),
    (so.inject(optax.adamw, learning_rate=WARMUP_COSINE).init(ONES),
     {"learning_rate": WARMUP_COSINE, "momentum": 0.9}, "specs.momentum"),
    (so.inject(optax.adamw, learning_rate=WARMUP_COSINE).init(ONES),
     {"learning_rate": PLATEAU}, "specs.learning_rate"),
    (so.inject(optax.adamw, learning_rate=1e-3).init(ONES),
     {"learning_rate": WARMUP_COSINE}, "specs.learning_rate"),
])
def test_schedule_records_refuses_what_it_cannot_describe(state, specs, field):
    with pytest.raises(ValueError, match=field):
        so.schedule_records(state, specs)


# --- exact resume ---------------------------------------------------------------------------------

RESUME_SPECS = {"learning_rate": WARMUP_COSINE, "b1": B1_RAMP, "weight_decay": WD_COSINE}
_rng = np.random.default_rng(0)
X = jnp.asarray(_rng.normal(size=(64, 8)), jnp.float32)
Y = jnp.asarray(np.sin(_rng.normal(size=(64, 1))), jnp.float32)
PARAMS0 = {"w1": jnp.asarray(_rng.normal(size=(8, 16)) / 3, jnp.float32),
           "b1": jnp.zeros(16, jnp.float32),
           "w2": jnp.asarray(_rng.normal(size=(16, 1)) / 4, jnp.float32),
           "b2": jnp.zeros(1, jnp.float32)}


def _loss(params):
    hidden = jnp.tanh(X @ params["w1"] + params["b1"])
    return jnp.mean((hidden @ params["w2"] + params["b2"] - Y) ** 2)


def _train(opt, params, state, n: int):
    """n jitted updates; returns params, state and the hyperparameters used by each update."""
    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(_loss)(params), state, params)
        return optax.apply_updates(params, updates), state
    used = []
    for _ in range(n):
        params, state = step(params, state)
        used.append({k: np.asarray(v) for k, v in state.hyperparams.items()})
    return params, state, used


def _save(tree) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def _restore(template, leaves: list[np.ndarray]):
    treedef = jax.tree_util.tree_structure(template)
    assert [x.dtype for x in leaves] == [x.dtype for x in jax.tree_util.tree_leaves(template)]
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])


def _rebuilt_from_stored_specs(stored: str):
    return so.inject(optax.adamw, **json.loads(stored))


def test_resume_after_400_of_1000_updates_is_exact():
    opt = so.inject(optax.adamw, **RESUME_SPECS)
    straight_params, _, straight_used = _train(opt, PARAMS0, opt.init(PARAMS0), 1000)

    params, state, used = _train(opt, PARAMS0, opt.init(PARAMS0), 400)
    stored = json.dumps(RESUME_SPECS)
    saved_params, saved_state = _save(params), _save(state)
    assert so.schedule_records(state, RESUME_SPECS)["last_epoch"] == 400
    del opt, params, state

    opt = _rebuilt_from_stored_specs(stored)
    params = _restore(PARAMS0, saved_params)
    state = _restore(opt.init(params), saved_state)
    params, state, rest = _train(opt, params, state, 600)

    for name in straight_used[0]:
        np.testing.assert_array_equal([u[name] for u in used + rest],
                                      [u[name] for u in straight_used], err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, strict=True),
                 params, straight_params)
    assert int(state.count) == 1000


def test_restoring_count_alone_does_not_resume():
    opt = so.inject(optax.adamw, **RESUME_SPECS)
    straight_params, _, straight_used = _train(opt, PARAMS0, opt.init(PARAMS0), 420)
    params, state, _ = _train(opt, PARAMS0, opt.init(PARAMS0), 400)

    fresh = opt.init(params)  # every per-hyperparameter count in hyperparams_states back at 0
    partial = fresh._replace(count=state.count, hyperparams=state.hyperparams,
                             inner_state=state.inner_state)
    params, _, rest = _train(opt, params, partial, 20)

    lr = schedules.from_spec(WARMUP_COSINE)
    assert rest[0]["learning_rate"] == pytest.approx(lr(0))  # the warmup starts over
    assert straight_used[400]["learning_rate"] == pytest.approx(lr(400), rel=1e-6)
    assert not np.array_equal(params["w1"], straight_params["w1"])
