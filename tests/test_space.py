"""The search space: sampled points, misspelt distributions, and how much of a space is checked."""

from __future__ import annotations

import optuna
import pytest

import schedules
from runner.space import (
    DistributionError,
    _branch_count,
    _Exhaust,
    check_distributions,
    check_space,
    invalid_points,
    realize,
    sample,
)

# every corner check_space draws is valid; warmup 500 / decay 300 is not
CLASHING = {"kind": "warmup_cosine_decay", "init_value": 0, "peak_value": 1e-3,
            "warmup_steps": {"int": [0, 900]}, "decay_steps": {"int": [100, 1000]}}


def test_a_space_valid_at_its_corners_passes_the_check():
    check_space({"learning_rate": CLASHING}, "hyperparams", schedule_keys=True)


def test_an_invalid_point_raises_a_one_line_schedule_error_naming_the_key():
    trial = optuna.trial.FixedTrial({"hyperparams.learning_rate.warmup_steps": 500,
                                     "hyperparams.learning_rate.decay_steps": 300})
    with pytest.raises(schedules.ScheduleError) as info:
        realize({"learning_rate": CLASHING}, {}, trial)
    assert str(info.value) == (
        "hyperparams.learning_rate: warmup_cosine_decay.decay_steps: expected more than "
        "warmup_steps (500), the total length includes the warmup; got 300")


def test_invalid_points_counts_and_gives_the_first_reason():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    invalid, reason = invalid_points({"learning_rate": CLASHING}, {}, seed=0, count=200)
    assert 40 < invalid < 160  # about a third of the square has warmup >= decay
    assert reason.startswith("hyperparams.learning_rate: warmup_cosine_decay.decay_steps: ")
    assert invalid_points({"learning_rate": CLASHING}, {}, seed=0, count=200) == (invalid, reason)
    assert invalid_points({"b1": 0.9}, {"width": {"choice": [8, 16]}}, seed=0, count=20) == (0, None)


@pytest.mark.parametrize("value, numbers, message", [
    ({"log_uniform": [1e-4, 1e-1]}, False,
     "p: unknown distribution 'log_uniform' (did you mean 'loguniform'? known: loguniform, "
     "uniform, int, choice)"),
    ({"kind": "constant", "value": {"uniformm": [0, 1]}}, True,
     "p.value: unknown distribution 'uniformm' (did you mean 'uniform'? "),
    ({"choice": [{"kind": "constant", "value": {"chioce": [1, 2]}}]}, False,
     "p.constant.value: unknown distribution 'chioce' (did you mean 'choice'? "),
    ({"kind": "join", "boundaries": [5], "schedules": [{"kind": "constant", "value": 1.0},
                                                        {"kind": "constant", "value": {"normal": [0, 1]}}]},
     True, "p.schedules.1.value: unknown distribution 'normal' (known: "),
])
def test_misspelt_distributions_are_named(value, numbers, message):
    with pytest.raises(DistributionError) as info:
        check_distributions(value, "p", numbers=numbers)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("value", [
    {"normal": [0, 1]},        # any dict may be a param: only a name close to a distribution
    {"sizes": [8, 16]},
    {"name": "digits"},
    {"a": {"b": [1, 2]}},
    {"loguniform": [1e-3, 1e-1]},
    {"int": [1, 4], "step": 1},
])
def test_params_dicts_are_left_alone(value):
    check_distributions(value, "p", numbers=False)


def test_boundary_maps_are_not_mistaken_for_distributions():
    check_distributions({"kind": "piecewise_constant", "init_value": 1.0,
                         "boundaries_and_scales": {"100": 0.5}}, "p", numbers=True)


def test_every_option_of_a_nested_choice_is_visited():
    value = {"choice": [{"a": {"choice": [1, 2, 3]}},
                        {"b": {"choice": [{"c": {"choice": [4, 5]}}, 6]}}]}
    seen = {repr(sample(value, "p", _Exhaust(i, 0))) for i in range(_branch_count(value))}
    assert seen == {"{'a': 1}", "{'a': 2}", "{'a': 3}", "{'b': {'c': 4}}", "{'b': {'c': 5}}",
                    "{'b': 6}"}
