"""A misspelt hyperparameter name fails every trial alike: each adapter names the likely one."""

from __future__ import annotations

import pytest
import torch

import schedules.torch as sched_torch
from schedules import ScheduleError


def _adamw() -> torch.optim.AdamW:
    return torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=0.1)


@pytest.mark.parametrize("name, expected", [
    ("learnin_rate", "param group 0, hyperparameter 'learnin_rate': AdamW has no hyperparameter "
                     "'learnin_rate' (did you mean 'learning_rate'? numeric ones: eps, lr, "
                     "weight_decay)"),
    ("lrr", "(did you mean 'lr'? numeric ones:"),
    ("weight_decy", "(did you mean 'weight_decay'? numeric ones:"),
    ("momentum", "AdamW has no hyperparameter 'momentum' (numeric ones: eps, lr, weight_decay)"),
])
def test_torch_suggests_the_close_name(name, expected):
    with pytest.raises(ScheduleError) as info:
        sched_torch.attach(_adamw(), **{name: 0.1})
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_torch_suggests_only_what_this_optimizer_has():
    sgd = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ScheduleError, match=r"\(did you mean 'momentum'\? "):
        sched_torch.attach(sgd, momentun=0.9)


def test_optax_suggests_the_close_name():
    optax = pytest.importorskip("optax")
    import schedules.optax as sched_optax

    with pytest.raises(TypeError) as info:
        sched_optax.inject(optax.adamw, learnin_rate=0.1)
    assert str(info.value).startswith(
        "hyperparameter 'learnin_rate': adamw has no parameter 'learnin_rate' (did you mean "
        "'learning_rate'? parameters: learning_rate, b1, b2, eps, ")
    with pytest.raises(TypeError, match=r"sgd has no parameter 'bogus' \(parameters: "):
        sched_optax.inject(optax.sgd, learning_rate=0.1, bogus=1)
