"""The trial context without Ray: RNG streams, background saves announced once durable, retention."""

from __future__ import annotations

import os
import random
import threading

import numpy as np
import pytest

from runner.checkpoint import _store, read_checkpoint, write_checkpoint
from runner.context import Control, TrialContext, TrialTask, capture_rng, restore_rng
from tests.trainables import Tally

def _task(root, steps, report_every, checkpoint_every, **store_options) -> TrialTask:
    return TrialTask(number=0, trainable="tests.trainables:quadratic", params={},
                     schedule_specs={}, steps=steps, report_every=report_every,
                     checkpoint_every=checkpoint_every, seed=0, checkpoint_root=str(root),
                     objective_metrics=["loss"], wait_for_pruning=False,
                     store_options=store_options)


def _draws(torch) -> list:
    return [random.random(), float(np.random.random()), float(torch.rand(()).item())]


def test_rng_streams_continue_after_a_checkpoint_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws(torch)  # move off the seeded positions (numpy's cached gaussian included)
    np.random.standard_normal()
    uri = str(tmp_path / "rng.arrow")
    write_checkpoint(uri, {"rng": capture_rng()}, {"step": 0})
    expected = _draws(torch)

    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(read_checkpoint(uri).state["rng"])
    assert _draws(torch) == expected


def test_cuda_streams_of_devices_the_new_node_lacks_are_dropped(monkeypatch):
    """Saved on a 2-GPU node, resumed on a 1-GPU node: device 0 gets its own stream back."""
    torch = pytest.importorskip("torch")
    state = capture_rng()
    set_states = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_states.extend)
    streams = [torch.full((16,), i, dtype=torch.uint8) for i in range(2)]
    restore_rng({**state, "torch_cuda": streams})
    assert len(set_states) == 1 and torch.equal(set_states[0], streams[0])


def test_a_background_save_is_announced_only_once_durable(tmp_path, monkeypatch):
    release = threading.Event()
    write = _store._write

    def held_write(*args, **kwargs):
        release.wait()  # the save stays in flight until the trainable has moved on
        write(*args, **kwargs)

    monkeypatch.setattr(_store, "_write", held_write)
    log = []

    def emit(event):
        if event["type"] == "checkpoint":
            assert os.path.exists(event["uri"]), "announced before it was durable"
            log.append(("checkpoint", event["step"]))

    ctx = TrialContext(_task(tmp_path, steps=8, report_every=8, checkpoint_every=2,
                             async_save=True), emit, Control())
    ctx.track(tally=Tally())
    try:
        for step in ctx.steps():
            log.append(("step", step))
            if step == 3:
                release.set()
    finally:
        release.set()  # never leave the save thread held
        ctx.close()
    # checkpoint 2 is held until step 3 runs; each later one is announced by the next save at
    # the latest, and the final one (8) by close()
    assert log.index(("step", 3)) < log.index(("checkpoint", 2))
    assert [entry for entry in log if entry[0] == "checkpoint"] == [
        ("checkpoint", 2), ("checkpoint", 4), ("checkpoint", 6), ("checkpoint", 8)]


def test_retention_ranks_a_checkpoint_after_a_resume_by_the_values_reported_before_it(tmp_path):
    """A checkpoint every step, a report every fourth: after a resume the first checkpoints come
    before any new report and carry the last values reported before the resume."""
    losses = {4: 1.0, 8: 5.0}

    def run(until: int) -> TrialContext:
        ctx = TrialContext(_task(tmp_path, steps=12, report_every=4, checkpoint_every=1,
                                 keep_last=1, keep_best=1, metric="loss", mode="min"),
                           lambda event: None, Control())
        ctx.track(tally=Tally())
        for step in ctx.steps():
            if ctx.report_due(step):
                ctx.report(step + 1, loss=losses[step + 1])
            if step + 1 == until:
                break
        ctx.close()
        return ctx

    run(until=6)  # checkpoints 1..5, of which 4 and 5 carry loss 1.0: 5 is kept
    resumed = run(until=9)  # resumes at 5; checkpoints 6 and 7 carry loss 1.0, 8 loss 5.0
    assert resumed.start_step == 5
    # the last is 8, the best the newest with loss 1.0: 7 (5 if 6 and 7 carried no loss)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000007.arrow", "ckpt-000000008.arrow",
                                            "owner.json"]


def test_a_trial_resumed_after_its_final_save_finishes_with_that_checkpoint_and_values(tmp_path):
    """A driver killed after writing a finished trial's row but before telling the study: the
    next driver runs it again, and it finishes at once from its final checkpoint."""
    def run() -> TrialContext:
        ctx = TrialContext(_task(tmp_path, steps=8, report_every=4, checkpoint_every=4),
                           lambda event: None, Control())
        ctx.track(tally=Tally())
        for step in ctx.steps():
            if ctx.report_due(step):
                ctx.report(step + 1, loss=float(step))
        ctx.close()
        return ctx

    first = run()
    again = run()
    assert again.start_step == 8 and again.final_checkpoint == first.final_checkpoint
    assert again.final_values() == first.final_values() == {"loss": 7.0}
