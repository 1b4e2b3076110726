"""The core contract: specs round-trip, bad specs name their field, values are never NaN or inf."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import typing

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schedules
from schedules import KINDS, ScheduleError
from tests.spec_strategies import Ranges, joins, kind, stateless_specs

# --- valid specs of every kind --------------------------------------------------------------------
# Magnitudes an optimizer hyperparameter can take: zero, or between 1e-12 and 1e6 either sign.
# Rates run from strong decay to doubling; factors over eight decades; lengths up to 20k steps.

VALUE = st.just(0.0) | st.floats(1e-12, 1e6) | st.floats(-1e6, -1e-12)
FACTOR = st.floats(1e-3, 1e5)
RANGES = Ranges(
    value=VALUE, steps=st.integers(0, 20_000), lengths=st.integers(1, 20_000),
    warmup=st.integers(0, 20_000), decay_span=20_000, exponent=st.floats(1e-2, 10.0), alpha=VALUE,
    rate=st.floats(1e-3, 2.0), positive=st.floats(1e-12, 1e6), div_factor=FACTOR,
    final_div_factor=FACTOR, pct_start=st.floats(0.01, 0.99), linear_pct=(0.01, 0.9, 0.0, 0.99),
    scales=st.dictionaries(st.integers(0, 30_000).map(str), st.floats(0.0, 10.0), max_size=6),
    join_bound=30_000)
STATELESS = stateless_specs(RANGES)
STATELESS["join"] = st.recursive(st.one_of(list(STATELESS.values())),
                                 lambda parts: joins(parts, RANGES), max_leaves=6).filter(
    lambda spec: spec["kind"] == "join")
PLATEAU = kind("reduce_on_plateau", {"init_value": VALUE}, {
    "mode": st.sampled_from(["min", "max"]), "factor": st.floats(0.01, 0.99),
    "patience": st.integers(0, 20), "threshold": st.floats(0.0, 1.0),
    "threshold_mode": st.sampled_from(["rel", "abs"]), "cooldown": st.integers(0, 20),
    "min_value": st.floats(0.0, 1.0), "eps": st.floats(0.0, 1e-3)})
SPECS = {**STATELESS, "reduce_on_plateau": PLATEAU}


def test_every_kind_has_a_generator():
    assert sorted(SPECS) == sorted(KINDS)


# --- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(SPECS))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_spec_round_trips_through_from_spec_and_json(kind, data):
    schedule = schedules.from_spec(data.draw(SPECS[kind]))
    spec = schedule.spec()
    assert spec["kind"] == kind
    assert schedules.from_spec(spec) == schedule
    stored = json.loads(json.dumps(spec, allow_nan=False))
    assert stored == spec
    assert schedules.from_spec(stored) == schedule
    assert schedules.as_schedule(stored) == schedule
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        schedule.kind = "constant"


def test_as_schedule_turns_a_number_into_a_constant():
    assert schedules.as_schedule(3).spec() == {"kind": "constant", "value": 3.0}
    assert schedules.as_schedule(0.5)(12345) == 0.5


# --- bad specs ------------------------------------------------------------------------------------

LINEAR = {"kind": "linear", "init_value": 1.0, "end_value": 0.0, "transition_steps": 10}
CONSTANT = {"kind": "constant", "value": 1.0}
WARMUP_COSINE = {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 1.0,
                 "warmup_steps": 10, "decay_steps": 100}
BAD = [  # (spec, the field its error must name)
    ({"kind": "nope"}, "kind"),
    ({"init_value": 1.0}, "kind"),
    ({k: v for k, v in LINEAR.items() if k != "transition_steps"}, "transition_steps"),
    ({**LINEAR, "transition_step": 5}, "transition_step"),
    ({**LINEAR, "init_value": "1.0"}, "init_value"),
    ({**LINEAR, "transition_steps": True}, "transition_steps"),
    ({**LINEAR, "transition_steps": 2.5}, "transition_steps"),
    ({**LINEAR, "transition_steps": -1}, "transition_steps"),
    ({**LINEAR, "transition_begin": -3}, "transition_begin"),
    ({**LINEAR, "init_value": math.inf}, "init_value"),
    ({**LINEAR, "end_value": math.nan}, "end_value"),
    ({**CONSTANT, "value": True}, "value"),
    ({"kind": "exponential_decay", "init_value": 1.0, "transition_steps": 10, "decay_rate": 0.0},
     "decay_rate"),
    ({"kind": "exponential_decay", "init_value": 1.0, "transition_steps": 10, "decay_rate": 0.5,
      "staircase": "yes"}, "staircase"),
    ({"kind": "cosine_decay", "init_value": 1.0, "decay_steps": 0}, "decay_steps"),
    ({**WARMUP_COSINE, "decay_steps": 10}, "decay_steps"),
    ({**WARMUP_COSINE, "decay_steps": 5}, "decay_steps"),
    ({"kind": "piecewise_constant", "init_value": 1.0, "boundaries_and_scales": {"-5": 0.5}},
     "boundaries_and_scales"),
    ({"kind": "piecewise_constant", "init_value": 1.0,
      "boundaries_and_scales": {"10": 0.5, "010": 0.1}}, "boundaries_and_scales"),
    ({"kind": "piecewise_constant", "init_value": 1.0, "boundaries_and_scales": {"5": math.inf}},
     "boundaries_and_scales"),
    ({"kind": "piecewise_interpolate", "interpolate_type": "cubic", "init_value": 1.0},
     "interpolate_type"),
    ({"kind": "linear_onecycle", "transition_steps": 100, "peak_value": 1.0, "pct_start": 0.5,
      "pct_final": 0.4}, "pct_final"),
    ({"kind": "cosine_onecycle", "transition_steps": 100, "peak_value": 1.0, "pct_start": 1.0},
     "pct_start"),
    ({"kind": "sgdr", "cosine_kwargs": []}, "cosine_kwargs"),
    ({"kind": "sgdr", "cosine_kwargs": [{**WARMUP_COSINE, "decay_steps": 3}]}, "decay_steps"),
    ({"kind": "wsd", "peak_value": 1.0, "warmup_steps": 1, "stable_steps": 1, "decay_steps": 1,
      "decay_type": "exp"}, "decay_type"),
    ({"kind": "cyclic", "base_value": 0.0, "max_value": 1.0, "step_size_up": 0}, "step_size_up"),
    ({"kind": "reduce_on_plateau", "init_value": 1.0, "factor": 1.5}, "factor"),
    ({"kind": "reduce_on_plateau", "init_value": 1.0, "patience": -1}, "patience"),
    ({"kind": "reduce_on_plateau", "init_value": 1.0, "mode": "minimum"}, "mode"),
    ({"kind": "join", "schedules": [CONSTANT] * 3, "boundaries": [10, 5]}, "boundaries"),
    ({"kind": "join", "schedules": [CONSTANT] * 3, "boundaries": [5, 5]}, "boundaries"),
    ({"kind": "join", "schedules": [CONSTANT] * 2, "boundaries": [5, 10]}, "boundaries"),
    ({"kind": "join", "schedules": [CONSTANT] * 2, "boundaries": []}, "boundaries"),
    ({"kind": "join", "schedules": [CONSTANT] * 2, "boundaries": [-5]}, "boundaries"),
    ({"kind": "join", "schedules": [], "boundaries": []}, "schedules"),
    ({"kind": "join", "schedules": [CONSTANT, {"kind": "reduce_on_plateau", "init_value": 1.0}],
      "boundaries": [10]}, "schedules.1"),
    ({"kind": "join", "schedules": [CONSTANT, {**LINEAR, "init_value": "x"}], "boundaries": [10]},
     "schedules.1.init_value"),
]


@pytest.mark.parametrize("spec, field", BAD, ids=[f"{s.get('kind')}-{f}" for s, f in BAD])
def test_a_bad_spec_raises_a_schedule_error_naming_the_field(spec, field):
    with pytest.raises(ScheduleError, match=field) as error:
        schedules.from_spec(spec)
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("spec", ["constant", 1.5, None, ["constant"], True])
def test_a_spec_that_is_not_a_mapping_is_refused(spec):
    with pytest.raises(ScheduleError, match="mapping"):
        schedules.from_spec(spec)


def _base_type(annotation) -> type | None:
    """float or int for a scalar field (Optional unwrapped), else None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    annotation = args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 \
        else annotation
    return annotation if annotation in (float, int) else None


@pytest.mark.parametrize("kind", sorted(SPECS))
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_every_field_is_checked(kind, data):
    """Dropping a required field, adding one, or mistyping any scalar names that field."""
    spec = schedules.from_spec(data.draw(SPECS[kind])).spec()
    for name, field in KINDS[kind].model_fields.items():
        key = field.alias or name
        if key == "kind":
            continue
        if field.is_required():
            with pytest.raises(ScheduleError, match=f"{kind}.{key}: missing"):
                schedules.from_spec({k: v for k, v in spec.items() if k != key})
        base = _base_type(field.annotation)
        for value in {float: ["0.5", True, math.nan], int: [True, 1.5, "3", -1]}.get(base, []):
            with pytest.raises(ScheduleError, match=rf"{kind}\.{key}\b"):
                schedules.from_spec({**spec, key: value})
    with pytest.raises(ScheduleError, match=f"{kind}.bogus: unknown field"):
        schedules.from_spec({**spec, "bogus": 1})


# --- values are finite ----------------------------------------------------------------------------

N_STEPS = 30_000


@pytest.mark.parametrize("kind", sorted(STATELESS))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_values_are_never_nan_or_infinite(kind, data):
    spec = data.draw(STATELESS[kind])
    schedule = schedules.from_spec(spec)
    with np.errstate(all="ignore"):  # a warning from a masked-out branch is not a wrong value
        values = schedule.values(0, N_STEPS)
        scalars = [schedule(step) for step in (0, N_STEPS // 3, N_STEPS - 1)]
    bad = np.flatnonzero(~np.isfinite(values))
    assert bad.size == 0, f"{spec}: step {bad[0]} gives {values[bad[0]]}"
    # One step alone and a whole range agree to the last bits: NumPy's vectorised cos and power
    # (SIMD) may round differently from the scalar ones, and a negative alpha (a cancellation)
    # turns a last-bit difference into a few ulp of the result: compare to the schedule's scale.
    scale = float(np.max(np.abs(values))) or 1.0
    np.testing.assert_allclose(np.array(scalars, dtype=np.float64),
                               values[[0, N_STEPS // 3, N_STEPS - 1]], rtol=1e-13,
                               atol=1e-14 * scale)


@settings(max_examples=25, deadline=None)
@given(spec=PLATEAU, metrics=st.lists(st.floats(-1e6, 1e6) | st.just(math.nan), max_size=300))
def test_reduce_on_plateau_stays_finite_and_never_rises(spec, metrics):
    schedule = schedules.from_spec(spec)
    state, previous = schedule.init_state(), spec["init_value"]
    for metric in metrics:
        state = schedule.update(state, metric)
        value = float(schedule.value_of(state))
        assert math.isfinite(value)
        assert abs(value) <= abs(previous)
        previous = value
    assert int(state["count"]) == sum(not math.isnan(m) for m in metrics)


def test_reduce_on_plateau_has_no_step_values():
    with pytest.raises(TypeError, match="value_of"):
        schedules.from_spec({"kind": "reduce_on_plateau", "init_value": 1.0})(3)


# --- what the library imports ---------------------------------------------------------------------

def test_schedules_imports_no_framework():
    code = ("import sys, schedules; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'ray', 'optuna', 'torch', 'jax', 'jaxlib', 'optax'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- agreement before a fork step ------------------------------------------------------------

WSD = {"kind": "wsd", "peak_value": 1e-3, "warmup_steps": 10, "stable_steps": 80,
       "decay_steps": 20, "decay_type": "1-sqrt"}


def test_a_wsd_with_a_longer_stable_phase_agrees_until_the_parents_cooldown():
    longer = {**WSD, "stable_steps": 2000}
    # the cooldown starts at 90 with the peak value itself: the first step that differs is 91
    assert schedules.first_difference(WSD, longer, 91) is None
    assert schedules.first_difference(WSD, longer, 5000) == 91


def test_a_cosine_of_another_length_disagrees_at_once_and_a_schedule_agrees_with_itself():
    cosine = {"kind": "cosine_decay", "init_value": 1e-3, "decay_steps": 100}
    assert schedules.first_difference(cosine, {**cosine, "decay_steps": 200}, 50) == 1
    assert schedules.first_difference(cosine, dict(cosine), 10_000) is None
    assert schedules.first_difference(0.1, {"kind": "constant", "value": 0.1}, 700) is None


def test_a_stateful_schedule_agrees_only_with_itself():
    plateau = {"kind": "reduce_on_plateau", "init_value": 0.1}
    assert schedules.first_difference(plateau, plateau, 100) is None
    assert schedules.first_difference(plateau, {**plateau, "factor": 0.5}, 100) == 0


def test_an_absolute_join_runs_each_part_on_its_own_timeline():
    first = {"kind": "constant", "value": 1.0}
    later = {"kind": "linear", "init_value": 0.0, "end_value": 1.0, "transition_steps": 100}
    relative = schedules.from_spec({"kind": "join", "schedules": [first, later],
                                    "boundaries": [50]})
    absolute = schedules.from_spec({"kind": "join", "schedules": [first, later],
                                    "boundaries": [50], "absolute": True})
    assert relative(50) == 0.0 and absolute(50) == 0.5 and absolute(49) == 1.0
    assert "absolute" not in relative.spec() and absolute.spec()["absolute"] is True
    wsd = {"kind": "wsd", "peak_value": 1.0, "warmup_steps": 0, "stable_steps": 80,
           "decay_steps": 20}
    assert schedules.branch_point({"kind": "join", "schedules": [first, wsd],
                                   "boundaries": [30], "absolute": True}) == 80


@settings(max_examples=60, deadline=None)
@given(data=st.data(), decay_type=st.sampled_from(["linear", "cosine", "1-sqrt"]))
def test_a_cooldown_agrees_with_its_schedule_before_it_starts_and_ends_at_the_end_value(
        data, decay_type):
    spec = data.draw(st.one_of(list(STATELESS.values())))
    start = data.draw(st.integers(0, 3000))
    stop = start + data.draw(st.integers(1, 1000))
    cooled = schedules.cooldown(spec, start, stop, decay_type, end_value=1e-6)
    assert schedules.first_difference(spec, cooled, start) is None
    schedule = schedules.from_spec(cooled)
    assert schedule(stop) == 1e-6 and schedule(stop + 7) == 1e-6
    assert schedules.from_spec(cooled) == schedules.from_spec(json.loads(json.dumps(cooled)))


def test_a_wsd_cooled_down_in_its_stable_phase_stays_a_wsd_with_its_cooldown_moved():
    cooled = schedules.cooldown(WSD, 40, 50, "linear")
    assert cooled == {**schedules.from_spec(WSD).spec(), "stable_steps": 30, "decay_steps": 10,
                      "decay_type": "linear"}
    # in its warmup there is no stable phase to move the cooldown into: a join
    early = schedules.cooldown(WSD, 5, 8)
    assert early["kind"] == "join" and schedules.from_spec(early)(8) == 0.0
    values = schedules.from_spec(early).values(5, 9)
    assert values[0] == schedules.from_spec(WSD)(5) and list(values) == sorted(values)[::-1]


@pytest.mark.parametrize("spec, start, stop, problem", [
    ({"kind": "reduce_on_plateau", "init_value": 0.1}, 10, 20, "cannot be cooled down"),
    (WSD, 20, 20, "expected 0 <= start < stop, got start 20, stop 20"),
    (WSD, -1, 20, "expected 0 <= start < stop"),
])
def test_a_cooldown_that_cannot_be_is_refused(spec, start, stop, problem):
    with pytest.raises(ScheduleError, match=problem):
        schedules.cooldown(spec, start, stop)
