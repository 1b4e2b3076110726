"""The character-level transformer example: its data split, a tiny trial, exact resume (atol=0)."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest

from examples import charlm_data as data
from runner.checkpoint import read_checkpoint
from runner.config import parse_config
from runner.driver import Sweep
from tests.test_preemption import Signaller, _outcome

TRAINABLE = "examples.charlm_torch:train"
TINY = {"n_layer": 2, "d_model": 32, "n_head": 4, "context": 32, "batch_size": 8}


def _data(run_dir):
    return {
        "name": "charlm",
        "trainable": TRAINABLE,
        "objective": {"metric": "val_loss"},
        "budget": {"steps": 40, "report_every": 10, "checkpoint_every": 20},
        "search": {"sampler": "random", "seed": 0, "n_trials": 1},
        # a pruner that never prunes makes every report wait for the driver: kills land on time
        "pruner": {"kind": "median", "n_startup_trials": 1000},
        "hyperparams": {
            "learning_rate": {"kind": "wsd", "peak_value": {"loguniform": [3e-3, 1e-2]},
                              "warmup_steps": 5, "stable_steps": 20, "decay_steps": 15},
            "b2": 0.99,
            "weight_decay": {"kind": "constant", "value": 0.1},
        },
        "params": TINY,
        "max_concurrent": 1,
        "storage": str(run_dir),
    }


def _run(run_dir, on_event=None):
    Sweep(parse_config(_data(run_dir), "charlm.yaml"), on_event=on_event).run()
    return _outcome(run_dir)


@pytest.fixture(scope="module")
def baseline(ray_local, tmp_path_factory):
    """An uninterrupted tiny trial, the reference the interrupted one must equal."""
    run_dir = tmp_path_factory.mktemp("charlm")
    return run_dir, _run(run_dir)


def test_the_split_is_a_pure_function_with_validation_the_last_tenth():
    tokens = data.encode(data.text())
    train, val = data.splits()
    assert len(val) == len(tokens) // 10 and len(train) + len(val) == len(tokens)
    assert np.array_equal(np.concatenate([train, val]), tokens)
    assert data.decode(val) == data.text()[len(train):]
    assert data.vocab() == tuple(sorted(set(data.text())))
    data.splits.cache_clear()
    again = data.splits()
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again))


def test_batches_are_a_pure_function_of_seed_and_step_and_stay_inside_their_split():
    train, val = data.splits()
    context = 64
    first = [data.batch_starts(7, step, 16, context, len(train)) for step in range(50)]
    assert all(np.array_equal(a, data.batch_starts(7, s, 16, context, len(train)))
               for s, a in enumerate(first))
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], data.batch_starts(8, 0, 16, context, len(train)))
    starts = np.concatenate(first + [data.batch_starts(s, 3, 4096, context, len(train))
                                     for s in range(4)])
    assert starts.min() >= 0 and starts.max() + context + 1 <= len(train)  # no window crosses
    x, y = data.windows(train, first[0], context)
    assert x.shape == y.shape == (16, context)
    assert np.array_equal(x[:, 1:], y[:, :-1])
    text = data.text()
    assert data.decode(np.append(x[0], y[0, -1])) == text[first[0][0]:first[0][0] + context + 1]
    fixed = data.val_starts(context, len(val))
    assert np.array_equal(fixed, data.val_starts(context, len(val))) and len(fixed) == 32
    assert fixed.min() == 0 and fixed.max() + context + 1 == len(val)


def test_a_tiny_trial_learns_below_the_uniform_loss(baseline):
    run_dir, (history, applied, states, trials) = baseline
    assert states[0][0] == "COMPLETE"
    val = [value for _, step, metric, value in history if metric == "val_loss"]
    assert [step for _, step, metric, _ in history if metric == "val_loss"] == [10, 20, 30, 40]
    assert all(math.isfinite(v) for v in val)
    assert val[-1] < math.log(len(data.vocab())) and val[-1] < val[0]
    assert states[0][1] == val[-1]
    # weight decay on group 0 only, the learning rate on both
    assert {name for _, _, name, _ in applied} >= {"learning_rate", "learning_rate.1",
                                                    "weight_decay", "weight_decay.1"}
    assert {v for _, _, name, v in applied if name == "weight_decay.1"} == {0.0}
    # the final checkpoint loads back into make_model(**params)
    import torch

    from examples.charlm_torch import lm_loss, make_model

    params = json.loads(trials[0]["params"])
    model = make_model(**params)
    model.load_state_dict(read_checkpoint(f"{run_dir}/{trials[0]['checkpoint']}")
                          .state["objects"]["model"])
    train, val_tokens = data.splits()
    x, y = (torch.from_numpy(a) for a in data.windows(
        val_tokens, data.val_starts(params["context"], len(val_tokens)), params["context"]))
    with torch.no_grad():  # this process may use other thread counts than the worker did
        assert lm_loss(model, x, y).item() == pytest.approx(val[-1], rel=1e-5)


def test_kill_9_of_the_worker_resumes_exactly(tmp_path, baseline):
    # checkpoints at 20, at the WSD branch point 25 (always kept, for `sweep extend`) and 40
    killer = Signaller([30], signal.SIGKILL)
    history, applied, states, trials = _run(tmp_path, on_event=killer)
    assert killer.sent == [30]
    assert (history, applied, states) == baseline[1][:3]
    assert trials[0]["restarts"] == 1 and trials[0]["lost"] == 1
    (entry,) = json.loads(trials[0]["restart_log"])
    assert entry["kind"] == "lost" and entry["resumed_at"] == 25
