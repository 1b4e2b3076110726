"""The PyTorch adapter: parity with torch's own schedulers, attach semantics, exact resume."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import schedules
import schedules.torch as sched_torch
from schedules import ScheduleError

PARITY = settings(max_examples=25, deadline=None)
RTOL = 1e-6
ATOL_OF_PEAK = 1e-9  # values near zero: compare against the schedule's peak instead

base_lrs = st.floats(1e-5, 1.0)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine OpenMP's waiting for a
    descheduled thread made the resume test 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr)


def torch_lrs(make, base_lr: float, steps: int) -> np.ndarray:
    """The lr torch's scheduler gives for updates 0..steps-1 (no optimizer steps are needed)."""
    optimizer = _optimizer(base_lr)
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore")
        scheduler = make(optimizer)
        out = [optimizer.param_groups[0]["lr"]]
        for _ in range(steps - 1):
            scheduler.step()
            out.append(optimizer.param_groups[0]["lr"])
    return np.asarray(out, dtype=np.float64)


def our_lrs(spec: dict, steps: int) -> np.ndarray:
    """The lr the adapter writes for updates 0..steps-1 (the optimizer's own lr is overridden)."""
    optimizer = _optimizer(123.0)
    scheduler = sched_torch.attach(optimizer, learning_rate=spec)
    out = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps - 1):
        scheduler.step()
        out.append(optimizer.param_groups[0]["lr"])
    assert scheduler.get_last_lr() == [out[-1]]
    return np.asarray(out, dtype=np.float64)


def assert_parity(ours: np.ndarray, theirs: np.ndarray, peak: float) -> None:
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL_OF_PEAK * peak)


# --- parity with torch.optim.lr_scheduler, computed at run time -----------------------------------


@PARITY
@given(base=base_lrs, t_max=st.integers(1, 3000), min_frac=st.floats(0.0, 0.5))
def test_cosine_annealing_lr(base, t_max, min_frac):
    eta_min = base * min_frac
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, t_max, eta_min),
                       base, t_max + 1)
    ours = our_lrs({"kind": "cosine_decay", "init_value": base, "decay_steps": t_max,
                    "alpha": eta_min / base}, t_max + 1)
    assert_parity(ours, theirs, base)


@PARITY
@given(base=base_lrs, start=st.floats(0.01, 1.0), end=st.floats(0.0, 1.0),
       total=st.integers(1, 2000), extra=st.integers(0, 500))
def test_linear_lr(base, start, end, total, extra):
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, start, end, total),
                       base, total + extra + 1)
    ours = our_lrs({"kind": "linear", "init_value": base * start, "end_value": base * end,
                    "transition_steps": total}, total + extra + 1)
    assert_parity(ours, theirs, base)


@PARITY
@given(base=base_lrs, step_size=st.integers(1, 400), gamma=st.floats(0.05, 1.0),
       steps=st.integers(1, 3000))
def test_step_lr(base, step_size, gamma, steps):
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size, gamma), base, steps)
    ours = our_lrs({"kind": "exponential_decay", "init_value": base, "transition_steps": step_size,
                    "decay_rate": gamma, "staircase": True}, steps)
    assert_parity(ours, theirs, base)


@PARITY
@given(base=base_lrs, milestones=st.sets(st.integers(0, 2500), max_size=8),
       gamma=st.floats(0.05, 1.0), steps=st.integers(1, 3000))
def test_multi_step_lr(base, milestones, gamma, steps):
    marks = sorted(milestones)
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, marks, gamma), base, steps)
    ours = our_lrs({"kind": "piecewise_constant", "init_value": base,
                    "boundaries_and_scales": {str(m): gamma for m in marks}}, steps)
    assert_parity(ours, theirs, base)


@PARITY
@given(base=base_lrs, gamma=st.floats(0.9, 1.0005), steps=st.integers(1, 3000))
def test_exponential_lr(base, gamma, steps):
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma), base, steps)
    bound = {"end_value": 2.0 * float(theirs.max())} if gamma > 1 else {}  # growth needs a bound
    ours = our_lrs({"kind": "exponential_decay", "init_value": base, "transition_steps": 1,
                    "decay_rate": gamma, **bound}, steps)
    assert_parity(ours, theirs, max(base, float(theirs.max())))


@PARITY
@given(max_lr=base_lrs, total=st.integers(10, 3000), data=st.data(),
       anneal=st.sampled_from(["cos", "linear"]), div=st.floats(2.0, 100.0),
       final_div=st.floats(10.0, 1e4))
def test_one_cycle_lr(max_lr, total, data, anneal, div, final_div):
    warm = data.draw(st.integers(2, total - 2), label="pct_start * total_steps")
    pct_start = warm / total
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr, total_steps=total, pct_start=pct_start, anneal_strategy=anneal,
        cycle_momentum=False, div_factor=div, final_div_factor=final_div), max_lr, total)
    ours = our_lrs({"kind": "piecewise_interpolate",
                    "interpolate_type": "cosine" if anneal == "cos" else "linear",
                    "init_value": max_lr / div,
                    "boundaries_and_scales": {str(warm - 1): div,
                                              str(total - 1): 1.0 / (div * final_div)}}, total)
    assert_parity(ours, theirs, max_lr)


@PARITY
@given(base=base_lrs, height=st.floats(1.0, 20.0), up=st.integers(1, 500),
       down=st.one_of(st.none(), st.integers(1, 500)),
       mode=st.sampled_from(["triangular", "triangular2", "exp_range"]),
       gamma=st.floats(0.995, 1.0), steps=st.integers(1, 3000))
def test_cyclic_lr(base, height, up, down, mode, gamma, steps):
    top = base * height
    steps = min(steps, 1000 * (up + (down or up)))  # torch's triangular2 overflows past 1024 cycles
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.CyclicLR(
        o, base, top, step_size_up=up, step_size_down=down, mode=mode, gamma=gamma,
        cycle_momentum=False), base, steps)
    ours = our_lrs({"kind": "cyclic", "base_value": base, "max_value": top, "step_size_up": up,
                    "step_size_down": down, "mode": mode, "gamma": gamma}, steps)
    assert_parity(ours, theirs, top)


@PARITY
@given(base=base_lrs, factor=st.floats(0.01, 1.0), total=st.integers(1, 2000),
       steps=st.integers(1, 3000))
def test_constant_lr(base, factor, total, steps):
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor, total), base, steps)
    ours = our_lrs({"kind": "join", "boundaries": [total], "schedules": [
        {"kind": "constant", "value": base * factor}, {"kind": "constant", "value": base}]}, steps)
    assert_parity(ours, theirs, base)


@PARITY
@given(base=base_lrs, mode=st.sampled_from(["min", "max"]), factor=st.floats(0.05, 0.9),
       patience=st.integers(0, 6), threshold=st.floats(0.0, 0.1),
       threshold_mode=st.sampled_from(["rel", "abs"]), cooldown=st.integers(0, 4),
       min_frac=st.floats(0.0, 0.2), seed=st.integers(0, 2**32 - 1),
       reports=st.integers(1, 2000))
def test_reduce_lr_on_plateau(base, mode, factor, patience, threshold, threshold_mode, cooldown,
                              min_frac, seed, reports):
    # A noisy trend with plateaus (rounded values), so both improvements and cuts happen.
    rng = np.random.default_rng(seed)
    trend = -1.0 if mode == "min" else 1.0
    metrics = np.round(np.cumsum(rng.normal(0.02 * trend, 1.0, reports)), 1).tolist()
    theirs_opt = _optimizer(base)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(
        theirs_opt, mode=mode, factor=factor, patience=patience, threshold=threshold,
        threshold_mode=threshold_mode, cooldown=cooldown, min_lr=base * min_frac, eps=1e-8)
    ours_opt = _optimizer(123.0)
    ours = sched_torch.attach(ours_opt, learning_rate={
        "kind": "reduce_on_plateau", "init_value": base, "mode": mode, "factor": factor,
        "patience": patience, "threshold": threshold, "threshold_mode": threshold_mode,
        "cooldown": cooldown, "min_value": base * min_frac, "eps": 1e-8})
    got, want = [ours_opt.param_groups[0]["lr"]], [theirs_opt.param_groups[0]["lr"]]
    for metric in metrics:
        theirs.step(metric)
        ours.report(metric)
        ours.step()  # updates do not move a stateful schedule
        got.append(ours_opt.param_groups[0]["lr"])
        want.append(theirs_opt.param_groups[0]["lr"])
    assert_parity(np.asarray(got), np.asarray(want), base)
    assert ours.state_dict()["hyperparams"][0]["state"]["count"] == reports


# --- attach semantics -----------------------------------------------------------------------------

WARMUP_COSINE = {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 3e-3,
                 "warmup_steps": 10, "decay_steps": 100, "end_value": 1e-5}
B1_RAMP = {"kind": "linear", "init_value": 0.85, "end_value": 0.95, "transition_steps": 50}
WD_DECAY = {"kind": "cosine_decay", "init_value": 0.1, "decay_steps": 80, "alpha": 0.1}


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _adamw(model: torch.nn.Module, **kwargs) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1.0, betas=(0.5, 0.5), weight_decay=0.5,
                             **kwargs)


def _hyper(optimizer: torch.optim.Optimizer, group: int = 0) -> tuple[float, ...]:
    g = optimizer.param_groups[group]
    return float(g["lr"]), float(g["betas"][0]), float(g["betas"][1]), float(g["weight_decay"])


def _expected(step: int) -> tuple[float, float, float, float]:
    lr, b1, wd = (schedules.from_spec(s) for s in (WARMUP_COSINE, B1_RAMP, WD_DECAY))
    return lr(step), b1(step), 0.999, wd(step)


def test_values_at_construction_and_after_k_steps():
    optimizer = _adamw(_mlp())
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE, b1=B1_RAMP,
                                   b2=0.999, weight_decay=WD_DECAY)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    for k in range(1200):  # crosses chunk boundaries
        assert scheduler.last_epoch == k
        assert _hyper(optimizer) == pytest.approx(_expected(k), rel=1e-12, abs=1e-15)
        assert isinstance(optimizer.param_groups[0]["betas"], tuple)
        assert scheduler.get_last_lr() == [optimizer.param_groups[0]["lr"]]
        scheduler.step()
    assert scheduler.base_lrs == [0.0]


def test_momentum_on_sgd_and_raw_keys():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, dampening=0.0)
    momentum = {"kind": "linear", "init_value": 0.5, "end_value": 0.9, "transition_steps": 4}
    scheduler = sched_torch.attach(optimizer, lr=0.05, momentum=momentum, dampening=0.1)
    for k in range(6):
        group = optimizer.param_groups[0]
        assert (group["lr"], group["momentum"], group["dampening"]) == pytest.approx(
            (0.05, schedules.from_spec(momentum)(k), 0.1))
        scheduler.step()
    keys = [(e["name"], e["key"]) for e in scheduler.state_dict()["hyperparams"]]
    assert keys == [("lr", "lr"), ("momentum", "momentum"), ("dampening", "dampening")]

    adam = torch.optim.Adam(model.parameters(), lr=0.1)
    sched_torch.attach(adam, **{"betas.1": 0.95})
    assert adam.param_groups[0]["betas"] == (0.9, 0.95)


def test_per_group_schedules_and_selected_groups():
    model = _mlp()
    optimizer = torch.optim.AdamW([{"params": model[0].parameters()},
                                   {"params": model[2].parameters(), "lr": 7.0}], lr=1.0)
    slow = {"kind": "linear", "init_value": 1e-3, "end_value": 0.0, "transition_steps": 10}
    scheduler = sched_torch.attach(optimizer, learning_rate=[WARMUP_COSINE, slow], b1=0.8)
    for _ in range(5):
        scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx(
        [schedules.from_spec(WARMUP_COSINE)(5), schedules.from_spec(slow)(5)])
    assert [g["betas"][0] for g in optimizer.param_groups] == [0.8, 0.8]

    only_second = torch.optim.AdamW([{"params": model[0].parameters()},
                                     {"params": model[2].parameters()}], lr=1.0)
    scheduler = sched_torch.attach(only_second, groups=[1], learning_rate=[slow])
    scheduler.step()
    assert scheduler.get_last_lr() == [1.0, pytest.approx(schedules.from_spec(slow)(1))]


def test_tensor_hyperparameters_are_filled_in_place():
    model = _mlp()
    lr = torch.tensor(1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE)
    assert optimizer.param_groups[0]["lr"] is lr
    model(torch.randn(4, 8)).sum().backward()
    for k in range(1, 20):
        optimizer.step()
        scheduler.step()
        assert lr.item() == pytest.approx(schedules.from_spec(WARMUP_COSINE)(k), rel=1e-6)
    last = scheduler.get_last_lr()[0]
    assert isinstance(last, torch.Tensor) and last is not lr and float(last) == lr.item()

    betas = (torch.tensor(0.9), torch.tensor(0.999))
    adam = torch.optim.Adam(model.parameters(), lr=0.1, betas=betas)
    scheduler = sched_torch.attach(adam, b1=B1_RAMP)
    scheduler.step()
    assert adam.param_groups[0]["betas"][0] is betas[0]
    assert betas[0].item() == pytest.approx(schedules.from_spec(B1_RAMP)(1), rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"momentum": 0.9}, "has no hyperparameter 'momentum'"),
    ({"betas": 0.9}, "schedule its elements as 'betas.0', 'betas.1'"),
    ({"betas.2": 0.9}, "has no element 2"),
    ({"amsgrad": 1.0}, "not a number"),
    ({"learning_rate": 0.1, "lr": 0.2}, "'lr' is already driven by 'learning_rate'"),
    ({"learning_rate": [0.1, 0.2]}, "expected one schedule per driven param group"),
    ({"learning_rate": {"kind": "linear", "init_value": 1.0}}, "hyperparameter 'learning_rate'"),
    ({"groups": [3], "learning_rate": 0.1}, "groups: expected distinct indices below 1"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ScheduleError, match=match):
        sched_torch.attach(_adamw(_mlp()), **kwargs)


# --- state dicts ------------------------------------------------------------------------------------

PLATEAU = {"kind": "reduce_on_plateau", "init_value": 0.2, "patience": 1, "factor": 0.5}


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_format_and_weights_only_roundtrip():
    optimizer = _adamw(_mlp())
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE, b1=0.9,
                                   weight_decay=PLATEAU)
    for metric in (1.0, 2.0, 3.0, 4.0):
        scheduler.step()
        scheduler.report(metric)
    sd = scheduler.state_dict()
    assert _roundtrip(sd) == sd
    assert sd["format"] == "sweep.schedules/1" and sd["last_epoch"] == 4
    lr, b1, wd = sd["hyperparams"]
    assert lr == {"group": 0, "name": "learning_rate", "key": "lr", "spec":
                  schedules.from_spec(WARMUP_COSINE).spec(), "state": None,
                  "value": pytest.approx(schedules.from_spec(WARMUP_COSINE)(4), rel=1e-12)}
    assert (b1["key"], b1["spec"], b1["value"]) == ("betas.0", {"kind": "constant", "value": 0.9},
                                                    0.9)
    # patience 1: 2.0 and 3.0 are two bad reports in a row, so 3.0 cuts 0.2 to 0.1
    assert wd["state"] == {"value": 0.1, "best": 1.0, "num_bad": 1, "cooldown_counter": 0,
                           "count": 4}
    assert all(type(v) in (int, float) for v in wd["state"].values())
    assert wd["value"] == optimizer.param_groups[0]["weight_decay"] == 0.1


def test_load_restores_position_and_plateau_state():
    optimizer = _adamw(_mlp())
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE, weight_decay=PLATEAU)
    for metric in (1.0, 2.0, 3.0, 4.0, 0.5):
        scheduler.step()
        scheduler.report(metric)
    sd = _roundtrip(scheduler.state_dict())
    fresh_opt = _adamw(_mlp())
    fresh = sched_torch.attach(fresh_opt, learning_rate=WARMUP_COSINE, weight_decay=PLATEAU)
    fresh.load_state_dict(sd)
    assert fresh.state_dict() == scheduler.state_dict()
    assert fresh.get_last_lr() == scheduler.get_last_lr()
    assert fresh_opt.param_groups[0]["weight_decay"] == 0.1
    for metric in (0.7, 0.8, 0.9):
        for s in (scheduler, fresh):
            s.step()
            s.report(metric)
    assert fresh.state_dict() == scheduler.state_dict()


@pytest.mark.parametrize("change", ["spec", "missing", "format"])
def test_mismatched_state_dict_is_refused(change):
    scheduler = sched_torch.attach(_adamw(_mlp()), learning_rate=WARMUP_COSINE, b1=0.9)
    for _ in range(3):
        scheduler.step()
    sd = scheduler.state_dict()
    other = sched_torch.attach(_adamw(_mlp()), learning_rate=WARMUP_COSINE, b1=0.9)
    if change == "spec":
        sd["hyperparams"][1]["spec"] = {"kind": "constant", "value": 0.8}
        match = (r"param group 0, hyperparameter 'b1' \(betas.0\): the state dict was saved at "
                 r"step 3 with schedule .* differs from it at step 0")
    elif change == "missing":
        del sd["hyperparams"][1]
        match = "missing group 0 'betas.0'"
    else:
        sd["format"] = "torch"
        match = "expected format 'sweep.schedules/1'"
    for _ in range(3):
        other.step()
    with pytest.raises(ScheduleError, match=match):
        other.load_state_dict(sd)
    assert other.last_epoch == 3  # nothing was half-loaded


def _checkpoint(steps: int):
    """An optimizer and scheduler after ``steps`` updates, and their state dicts."""
    model = _mlp()
    optimizer = _adamw(model)
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE, b1=B1_RAMP, b2=0.999,
                                   weight_decay=WD_DECAY)
    for _ in range(steps):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return _roundtrip({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})


@pytest.mark.parametrize("order", ["scheduler_first", "optimizer_first"])
@pytest.mark.parametrize("pbt", [False, True], ids=["plain", "pbt_mutated_param_groups"])
def test_both_load_orders_continue_the_schedule(order, pbt):
    saved = _checkpoint(37)
    if pbt:  # a population-based trainer wrote other values into the checkpoint's param groups
        for group in saved["optimizer"]["param_groups"]:
            group.update(lr=group["lr"] * 5.0, betas=(0.1, 0.2), weight_decay=9.0)
    model = _mlp(seed=1)
    optimizer = _adamw(model)
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE, b1=B1_RAMP,
                                   b2=0.999, weight_decay=WD_DECAY)
    if order == "scheduler_first":
        scheduler.load_state_dict(saved["scheduler"])
        optimizer.load_state_dict(saved["optimizer"])
    else:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    used = []
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(_hyper(opt)))
    assert _hyper(optimizer) == _expected(37)
    for _ in range(5):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    assert used == [_expected(k) for k in range(37, 42)]


def test_schedule_wins_over_direct_param_group_edits():
    model = _mlp()
    optimizer = _adamw(model)
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE, b1=B1_RAMP)  # noqa: F841  (kept alive: its hooks hold it weakly)
    used = []
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(_hyper(opt)[:2]))
    optimizer.param_groups[0]["lr"] = 42.0
    optimizer.param_groups[0]["betas"] = (0.0, 0.999)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    assert used == [_expected(0)[:2]]


def test_dropped_scheduler_stops_driving():
    optimizer = _adamw(_mlp())
    sched_torch.attach(optimizer, learning_rate=0.25)  # not kept: its hooks go with it
    optimizer.param_groups[0]["lr"] = 3.0
    optimizer.step()
    assert optimizer.param_groups[0]["lr"] == 3.0
    scheduler = sched_torch.attach(optimizer, learning_rate=0.5)
    optimizer.param_groups[0]["lr"] = 3.0
    optimizer.step()
    assert optimizer.param_groups[0]["lr"] == 0.5
    assert scheduler.get_last_lr() == [0.5]


# --- exact resume -------------------------------------------------------------------------------------

RESUME_LR = {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 3e-3,
             "warmup_steps": 100, "decay_steps": 1000, "end_value": 1e-5}
RESUME_B1 = {"kind": "linear", "init_value": 0.85, "end_value": 0.95, "transition_steps": 700}
RESUME_WD = {"kind": "wsd", "peak_value": 0.1, "warmup_steps": 0, "stable_steps": 600,
             "decay_steps": 400, "end_value": 0.01, "decay_type": "1-sqrt"}


def _training(seed: int):
    """Model, AdamW, scheduler and a record of the hyperparameters each update used."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    scheduler = sched_torch.attach(optimizer, learning_rate=RESUME_LR, b1=RESUME_B1,
                                   weight_decay=RESUME_WD)
    used: list[tuple[float, ...]] = []
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(_hyper(opt)))
    return model, optimizer, scheduler, used


def _train(model, optimizer, scheduler, updates: int) -> None:
    for _ in range(updates):
        x = torch.randn(32, 16)  # the data position is the torch RNG state
        loss = torch.nn.functional.cross_entropy(model(x), (x[:, :4].sum(1) > 0).long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


@pytest.fixture(scope="module")
def straight_run():
    """1000 uninterrupted updates: the hyperparameters each used, and the final parameters."""
    model, optimizer, scheduler, used = _training(seed=0)
    torch.manual_seed(1234)
    _train(model, optimizer, scheduler, 1000)
    return used, model.state_dict()


@pytest.mark.parametrize("order", ["scheduler_first", "optimizer_first"])
def test_resume_is_exact(straight_run, order):
    straight, final = straight_run
    model, optimizer, scheduler, first = _training(seed=0)
    torch.manual_seed(1234)
    _train(model, optimizer, scheduler, 400)
    saved = _roundtrip({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()})
    del model, optimizer, scheduler

    model, optimizer, scheduler, second = _training(seed=99)  # rebuilt from scratch
    model.load_state_dict(saved["model"])
    if order == "scheduler_first":
        scheduler.load_state_dict(saved["scheduler"])
        optimizer.load_state_dict(saved["optimizer"])
    else:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    _train(model, optimizer, scheduler, 600)

    assert len(straight) == 1000 and straight[0] == (0.0, 0.85, 0.999, 0.1)
    assert first + second == straight
    for name, tensor in final.items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_a_state_dict_loads_into_a_schedule_that_agrees_with_its_past():
    """A fork: the parent's WSD saved at step 50, the child's WSD with a longer stable phase."""
    wsd = {"kind": "wsd", "peak_value": 1e-2, "warmup_steps": 10, "stable_steps": 60,
           "decay_steps": 30}
    parent = sched_torch.attach(_adamw(_mlp()), learning_rate=wsd)
    for _ in range(50):
        parent.step()
    longer = sched_torch.attach(_adamw(_mlp()), learning_rate={**wsd, "stable_steps": 500})
    longer.load_state_dict(parent.state_dict())
    assert longer.last_epoch == 50 and longer.get_last_lr() == parent.get_last_lr()
    for _ in range(40):  # past the parent's cooldown start (70): the child keeps its peak
        longer.step()
    assert longer.get_last_lr()[0] == 1e-2
    shorter = sched_torch.attach(_adamw(_mlp()), learning_rate={**wsd, "stable_steps": 20})
    with pytest.raises(ScheduleError, match="differs from it at step 31"):
        shorter.load_state_dict(parent.state_dict())


# --- the guard: the schedule's values are what every update uses -------------------------------------


def _exact(spec: dict, step: int) -> float:
    """The value the adapter writes for ``step``: computed per aligned chunk, bit for bit."""
    chunk = step // schedules.CHUNK
    values = schedules.from_spec(spec).values(chunk * schedules.CHUNK,
                                              (chunk + 1) * schedules.CHUNK)
    return values.tolist()[step % schedules.CHUNK]


def _exact_hyper(step: int) -> tuple[float, float, float, float]:
    return (_exact(WARMUP_COSINE, step), _exact(B1_RAMP, step), 0.999, _exact(WD_DECAY, step))


def _overwrite(optimizer: torch.optim.Optimizer, what: str) -> None:
    """What a checkpoint, a PBT mutation or a user's line may leave in a param group."""
    group = optimizer.param_groups[0]
    if what == "lr":
        group["lr"] = 42.0
    elif what == "lr_equal_copy":  # the same value in another float object
        group["lr"] = float(repr(float(group["lr"])))
    elif what == "lr_tensor":
        group["lr"] = torch.tensor(42.0, dtype=torch.float64)
    elif what == "betas":
        group["betas"] = (0.0, 0.5)
    elif what == "betas_list":
        group["betas"] = [0.1, 0.2]
    elif what == "weight_decay":
        group["weight_decay"] = 9.0
    elif what == "group_dict":  # the whole dict replaced, its values copied
        optimizer.param_groups[0] = {**group, "weight_decay": 9.0}
    elif what == "group_dict_same_values":
        optimizer.param_groups[0] = dict(group)
    elif what == "load_state_dict":  # in process: the loaded groups hold the very same floats
        optimizer.load_state_dict(optimizer.state_dict())
    else:
        raise AssertionError(what)


OVERWRITES = ["lr", "lr_equal_copy", "lr_tensor", "betas", "betas_list", "weight_decay",
              "group_dict", "group_dict_same_values", "load_state_dict"]


@pytest.mark.parametrize("what", OVERWRITES)
@pytest.mark.parametrize("when", ["before_optimizer_step", "before_scheduler_step"])
def test_values_overwritten_between_steps_are_replaced_before_the_update(what, when):
    """Every update uses the schedule's values, bit for bit, whatever was written into the param
    groups between steps, also at a chunk boundary; and after each ``scheduler.step()`` the param
    groups hold them too."""
    model = _mlp()
    optimizer = _adamw(model)
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE, b1=B1_RAMP,
                                   b2=0.999, weight_decay=WD_DECAY)
    used = []
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(_hyper(opt)))
    meddle = {0, 1, 2, 7, schedules.CHUNK - 1, schedules.CHUNK, schedules.CHUNK + 1}
    steps = schedules.CHUNK + 4
    model(torch.randn(4, 8)).sum().backward()
    for k in range(steps):
        if when == "before_optimizer_step" and k in meddle:
            _overwrite(optimizer, what)
        optimizer.step()
        if when == "before_scheduler_step" and k in meddle:
            _overwrite(optimizer, what)
        scheduler.step()
        assert _hyper(optimizer) == _exact_hyper(k + 1)
        assert isinstance(optimizer.param_groups[0]["betas"], tuple)
        if k in meddle:  # get_last_lr() is what step() left, whatever is written afterwards
            _overwrite(optimizer, what)
        assert [float(lr) for lr in scheduler.get_last_lr()] == [_exact(WARMUP_COSINE, k + 1)]
    assert used == [_exact_hyper(k) for k in range(steps)]
    if what == "lr_tensor":  # a tensor lr is filled in place, as capturable optimizers need
        assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)


def test_each_key_is_written_once_per_step_and_not_again_by_the_guard():
    """``scheduler.step()`` stores each driven key once; the pre-hook only checks, and writes
    when something else changed a value."""

    class Counting(dict):
        def __init__(self, *args):
            super().__init__(*args)
            self.writes = []

        def __setitem__(self, key, value):
            self.writes.append(key)
            super().__setitem__(key, value)

    model = _mlp()
    optimizer = _adamw(model)
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE, b1=B1_RAMP,
                                   b2=0.999, weight_decay=WD_DECAY)
    group = optimizer.param_groups[0] = Counting(optimizer.param_groups[0])
    model(torch.randn(4, 8)).sum().backward()
    for k in range(schedules.CHUNK + 3):
        optimizer.step()
        assert group.writes == [], k
        scheduler.step()
        assert sorted(group.writes) == ["betas", "lr", "weight_decay"], k
        assert _hyper(optimizer) == _exact_hyper(k + 1)
        group.writes.clear()
    dict.__setitem__(group, "lr", 7.0)  # behind the counter's back: the guard must notice
    optimizer.step()
    assert "lr" in group.writes and group["lr"] == _exact(WARMUP_COSINE, schedules.CHUNK + 3)


def test_a_tuple_with_an_unscheduled_element_keeps_that_element():
    """Only b1 is scheduled: b2 is whatever the param group holds, and survives every write."""
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.5, 0.99))
    scheduler = sched_torch.attach(optimizer, b1=B1_RAMP)
    used = []
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(opt.param_groups[0]["betas"]))
    model(torch.randn(4, 8)).sum().backward()
    b2 = [0.99] * 3 + [0.777] * 4 + [0.5] * 4  # the b2 update k uses
    for k in range(len(b2)):
        if k == 3:
            optimizer.param_groups[0]["betas"] = (0.0, 0.777)  # before an update
        optimizer.step()
        if k == 6:
            optimizer.param_groups[0]["betas"] = [0.3, 0.5]  # before scheduler.step()
        scheduler.step()
        held = 0.99 if k < 3 else 0.777 if k < 6 else 0.5
        assert optimizer.param_groups[0]["betas"] == (_exact(B1_RAMP, k + 1), held)
    assert used == [(_exact(B1_RAMP, k), b2[k]) for k in range(len(b2))]


def test_a_tensor_hyperparameter_changed_in_place_is_restored():
    model = _mlp()
    lr = torch.tensor(1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE)
    used = []
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(opt.param_groups[0]["lr"].item()))
    model(torch.randn(4, 8)).sum().backward()
    for k in range(6):
        lr.fill_(5.0)  # someone writes into the tensor the optimizer reads
        optimizer.step()
        scheduler.step()
    assert used == [torch.tensor(_exact(WARMUP_COSINE, k)).item() for k in range(6)]
    assert optimizer.param_groups[0]["lr"] is lr


def test_last_epoch_set_by_hand_is_followed():
    model = _mlp()
    optimizer = _adamw(model)
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE, b1=B1_RAMP,
                                   b2=0.999, weight_decay=WD_DECAY)
    used = []
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(_hyper(opt)))
    model(torch.randn(4, 8)).sum().backward()
    previous = 0
    for epoch in (5, 700, 3, 1023, 6):  # in this chunk, another, back, the last of one, back
        scheduler.last_epoch = epoch
        optimizer.step()  # the guard computes another chunk: get_last_lr() is still the last step's
        assert scheduler.get_last_lr() == [_exact(WARMUP_COSINE, previous)]
        scheduler.step()
        assert _hyper(optimizer) == _exact_hyper(epoch + 1)
        previous = epoch + 1
    assert used == [_exact_hyper(k) for k in (5, 700, 3, 1023, 6)]


def test_plateau_on_a_tuple_element_next_to_a_scheduled_one():
    model = _mlp()
    optimizer = _adamw(model)
    plateau = {**PLATEAU, "init_value": 0.9}
    scheduler = sched_torch.attach(optimizer, b1=plateau, b2=B1_RAMP)
    used = []
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(opt.param_groups[0]["betas"]))
    model(torch.randn(4, 8)).sum().backward()
    b1 = []
    for k, metric in enumerate((1.0, 2.0, 3.0, 4.0, 5.0, 0.1)):
        b1.append(scheduler.state_dict()["hyperparams"][0]["state"]["value"])
        optimizer.step()
        scheduler.step()
        scheduler.report(metric)
        assert optimizer.param_groups[0]["betas"] == (
            scheduler.state_dict()["hyperparams"][0]["state"]["value"], _exact(B1_RAMP, k + 1))
    assert b1 == [0.9, 0.9, 0.9, 0.45, 0.45, 0.225]
    assert used == [(b1[k], _exact(B1_RAMP, k)) for k in range(6)]


OPS = st.lists(st.one_of(st.just(("update",)), st.just(("scheduler_step",)),
                         st.just(("get_last_lr",)),
                         st.tuples(st.just("overwrite"), st.sampled_from(OVERWRITES)),
                         st.tuples(st.just("jump"), st.integers(0, 3 * schedules.CHUNK))),
               max_size=60)


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_any_interleaving_of_steps_and_meddling_uses_the_schedule(ops):
    """Whatever happens between them, each update uses the values for ``last_epoch``."""
    model = _mlp()
    optimizer = _adamw(model)
    scheduler = sched_torch.attach(optimizer, learning_rate=WARMUP_COSINE, b1=B1_RAMP,
                                   b2=0.999, weight_decay=WD_DECAY)
    used, want, last_lr = [], [], [_exact(WARMUP_COSINE, 0)]
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(_hyper(opt)))
    model(torch.randn(4, 8)).sum().backward()
    for op in ops:
        if op[0] == "update":
            want.append(_exact_hyper(scheduler.last_epoch))
            optimizer.step()
        elif op[0] == "scheduler_step":
            scheduler.step()
            assert _hyper(optimizer) == _exact_hyper(scheduler.last_epoch)
            last_lr = [_exact(WARMUP_COSINE, scheduler.last_epoch)]
        elif op[0] == "get_last_lr":  # not after every op: it may be computed when first asked
            assert [float(lr) for lr in scheduler.get_last_lr()] == last_lr
        elif op[0] == "overwrite":
            _overwrite(optimizer, op[1])
        else:
            scheduler.last_epoch = op[1]
    assert used == want
    assert [float(lr) for lr in scheduler.get_last_lr()] == last_lr
