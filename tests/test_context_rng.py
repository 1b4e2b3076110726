"""The RNG streams a trial checkpoints: they go through a real checkpoint file and continue exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest

from runner.checkpoint import read_checkpoint, write_checkpoint
from runner.context import capture_rng, restore_rng

torch = pytest.importorskip("torch")


def _draws() -> list:
    return [random.random(), float(np.random.random()), float(torch.rand(()).item())]


def test_rng_streams_continue_after_a_checkpoint_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()  # move off the seeded positions (numpy's cached gaussian included)
    np.random.standard_normal()
    uri = str(tmp_path / "rng.arrow")
    write_checkpoint(uri, {"rng": capture_rng()}, {"step": 0})
    expected = _draws()

    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(read_checkpoint(uri).state["rng"])
    assert _draws() == expected


def test_cuda_streams_of_devices_the_new_node_lacks_are_dropped(monkeypatch):
    """Saved on a 2-GPU node, resumed on a 1-GPU node: device 0 gets its own stream back."""
    state = capture_rng()
    set_states = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_states.extend)
    streams = [torch.full((16,), i, dtype=torch.uint8) for i in range(2)]
    restore_rng({**state, "torch_cuda": streams})
    assert len(set_states) == 1 and torch.equal(set_states[0], streams[0])
