"""Preemption-proof trials: kill -9, SIGTERM, driver loss, pause/resume/migrate; all exact (atol=0)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys

import pytest
import yaml

from runner.cli import main
from runner.config import parse_config
from runner.driver import Sweep
from runner.records import RunRecords
from runner.study import ResumeError

pytestmark = pytest.mark.usefixtures("ray_local")

TRAINABLES = ["examples.digits_torch:train", "examples.digits_jax:train"]


def _data(run_dir, trainable, n_trials=1, **overrides):
    data = {
        "name": "exact",
        "trainable": trainable,
        "objective": {"metric": "val_loss"},
        "budget": {"steps": 120, "report_every": 10, "checkpoint_every": 20},
        "search": {"sampler": "random", "seed": 0, "n_trials": n_trials},
        # a pruner that never prunes makes every report wait for the driver: kills land on time
        "pruner": {"kind": "median", "n_startup_trials": 1000},
        "hyperparams": {
            "learning_rate": {"kind": "warmup_cosine_decay", "init_value": 0.0,
                              "peak_value": {"loguniform": [3e-3, 1e-2]}, "warmup_steps": 15,
                              "decay_steps": 120, "end_value": 1e-5},
            "b1": {"kind": "linear", "init_value": 0.85, "end_value": 0.9, "transition_steps": 60},
            "weight_decay": {"kind": "cosine_decay", "init_value": 1e-3, "decay_steps": 120},
        },
        "params": {"width": 32},
        "max_concurrent": 1,
        "storage": str(run_dir),
    }
    data.update(overrides)
    return data


def _run(run_dir, trainable, on_event=None, **overrides):
    config = parse_config(_data(run_dir, trainable, **overrides), "test.yaml")
    Sweep(config, on_event=on_event).run()
    return config


def _outcome(run_dir):
    records = RunRecords(str(run_dir))
    history = sorted((r["trial"], r["step"], r["metric"], r["value"])
                     for r in records.read("history").to_pylist())
    applied = sorted((r["trial"], r["step"], r["hyperparameter"], r["value"])
                     for r in records.read("applied").to_pylist())
    trials = {t["number"]: t for t in records.read("trials").to_pylist()}
    return history, applied, {n: (t["state"], t["value"]) for n, t in trials.items()}, trials


class Signaller:
    """Sends ``sig`` to the worker running the trial when it first reports at or after each step."""

    def __init__(self, steps, sig):
        self.steps, self.sig = sorted(steps), sig
        self.pid, self.sent = None, []

    def __call__(self, kind, info):
        if kind == "placed":
            self.pid = info["pid"]
        elif kind == "report" and self.steps and self.pid and info["step"] >= self.steps[0]:
            os.kill(self.pid, self.sig)
            self.sent.append(info["step"])
            self.steps.pop(0)
            self.pid = None


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    """Uninterrupted runs of each example, the reference every interrupted run must equal."""
    out = {}
    for trainable in TRAINABLES:
        run_dir = tmp_path_factory.mktemp("baseline")
        _run(run_dir, trainable)
        out[trainable] = _outcome(run_dir)[:3]
    return out


@pytest.mark.parametrize("trainable", TRAINABLES)
def test_kill_9_of_the_worker_at_random_steps_resumes_exactly(tmp_path, baselines, trainable):
    # reports every 10 steps, checkpoints every 20: kills at the reports between checkpoints, so
    # none races a checkpoint of the same step
    steps = sorted(random.Random(trainable).sample(range(30, 120, 20), 3))
    killer = Signaller(steps, signal.SIGKILL)
    _run(tmp_path, trainable, on_event=killer)
    history, applied, states, trials = _outcome(tmp_path)
    assert killer.sent == steps
    assert (history, applied, states) == baselines[trainable]
    assert trials[0]["restarts"] == 3 and trials[0]["lost"] == 3
    import json

    log = json.loads(trials[0]["restart_log"])
    assert [entry["from_step"] for entry in log] == [s - 10 for s in killer.sent]
    assert [entry["resumed_at"] for entry in log] == [s - 10 for s in killer.sent]
    assert {entry["kind"] for entry in log} == {"lost"}


def test_a_report_lost_with_its_worker_after_the_checkpoint_comes_back(tmp_path, baselines):
    """The worker dies after its checkpoint of step 40 is durable, before the driver got the
    report of step 40: the report travels with the checkpoint and is not lost."""
    _run(tmp_path, "tests.held_trainables:digits_report_lost_at_40")
    history, applied, states, trials = _outcome(tmp_path)
    import json

    (entry,) = json.loads(trials[0]["restart_log"])
    assert entry["kind"] == "lost" and entry["resumed_at"] == 40
    assert (history, applied, states) == baselines[TRAINABLES[0]]


def test_kill_9_during_a_background_save_resumes_exactly_from_the_one_before(tmp_path, baselines):
    """The save of step 40 is still in flight at the kill (step 50): the trial resumes from 20."""
    killer = Signaller([45], signal.SIGKILL)
    started = []
    _run(tmp_path, "tests.held_trainables:digits_save_held_at_40",
         on_event=lambda kind, info: (started.append(info["step"]) if kind == "started" else None,
                                      killer(kind, info)),
         checkpoint={"async_save": True, "keep_last": 1})
    history, applied, states, trials = _outcome(tmp_path)
    assert killer.sent == [50] and started == [0, 20]
    assert (history, applied, states) == baselines[TRAINABLES[0]]
    import json

    (entry,) = json.loads(trials[0]["restart_log"])
    assert entry["from_step"] == 20 and trials[0]["restarts"] == 1


def test_sigterm_hands_over_at_the_next_step_with_no_lost_step(tmp_path, baselines):
    trainable = TRAINABLES[0]
    notice = Signaller([50], signal.SIGTERM)
    _run(tmp_path, trainable, on_event=notice)
    history, applied, states, trials = _outcome(tmp_path)
    assert (history, applied, states) == baselines[trainable]
    import json

    (entry,) = json.loads(trials[0]["restart_log"])
    assert entry["kind"] == "handover" and entry["reason"] == "preempted"
    assert trials[0]["lost"] == 0 and trials[0]["interruptions"] == 1
    # the checkpoint is taken at the step boundary after the notice: nothing before it is redone
    assert entry["from_step"] >= notice.sent[0]


def test_resume_refuses_a_config_that_changed_the_schedule(tmp_path, baselines):
    trainable = TRAINABLES[0]
    stopper = {}

    def stop_after_first_checkpoint(kind, info):
        if kind == "report" and info["step"] >= 30 and "sweep" in stopper:
            stopper.pop("sweep").stop()

    config = parse_config(_data(tmp_path, trainable), "test.yaml")
    sweep = Sweep(config, on_event=stop_after_first_checkpoint)
    stopper["sweep"] = sweep
    sweep.run()
    changed = _data(tmp_path, trainable)
    changed["hyperparams"]["b1"]["end_value"] = 0.95
    with pytest.raises(ResumeError, match=re.escape(
            f"{tmp_path}: the config changed hyperparams.b1.end_value since this sweep began")):
        Sweep(parse_config(changed, "test.yaml")).run()
    assert "sweep" not in stopper  # it was stopped mid-trial: there is a trial to refuse
    Sweep(config).run()  # the unchanged config carries on and finishes exactly
    assert _outcome(tmp_path)[:3] == baselines[trainable]


def test_pause_and_resume_through_the_cli_while_the_sweep_runs(tmp_path, baselines):
    trainable = TRAINABLES[0]
    run_dir = str(tmp_path)
    asked = {}

    def steer(kind, info):
        if kind == "report" and info["number"] == 0 and info["step"] >= 40 and "pause" not in asked:
            asked["pause"] = main(["pause", run_dir, "0"])
        if kind == "finished" and info["number"] == 1:
            asked["resume"] = main(["resume", run_dir, "0"])

    _run(tmp_path, trainable, on_event=steer, n_trials=2)
    assert asked == {"pause": 0, "resume": 0}
    history, applied, states, trials = _outcome(tmp_path)
    assert states[0] == baselines[trainable][2][0]
    assert [h for h in history if h[0] == 0] == baselines[trainable][0]
    import json

    (entry,) = json.loads(trials[0]["restart_log"])
    assert entry["kind"] == "pause" and entry["from_step"] >= 40
    assert trials[1]["ended"] < trials[0]["ended"]  # trial 1 ran on the freed worker meanwhile


def test_driver_killed_mid_trial_then_sweep_resume_carries_on_exactly(tmp_path, baselines):
    trainable = TRAINABLES[0]
    run_dir = tmp_path / "run"
    config_path = tmp_path / "exact.yaml"
    data = _data(run_dir, "tests.held_trainables:digits_held_after_40")
    config_path.write_text(yaml.safe_dump(data))
    driver = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(config_path)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    checkpoints = run_dir / "checkpoints" / "trial-00000"
    # the trial says (through the driver's output) when it holds after its checkpoint of step 40
    for line in driver.stdout:
        if "held after the checkpoint of step 40" in line:
            break
    driver.kill()
    driver.wait()
    # the kill landed mid-trial: no final checkpoint, no trial recorded as finished
    assert "ckpt-000000120.arrow" not in os.listdir(checkpoints)
    assert RunRecords(str(run_dir)).read("trials").num_rows == 0
    result = subprocess.run([sys.executable, "-m", "runner.cli", "resume", str(run_dir)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    history, applied, states, trials = _outcome(run_dir)
    assert (history, applied, states) == baselines[trainable]
    import json

    (entry,) = json.loads(trials[0]["restart_log"])
    assert entry["kind"] == "driver" and entry["reason"] == "driver lost"
    assert entry["resumed_at"] > 0 and trials[0]["restarts"] == 1
