"""The runner end to end on a local Ray: pruning, failures, conditional spaces, records, seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import duckdb
import pytest

from runner.config import parse_config
from runner.driver import Sweep
from runner.records import RunRecords

pytestmark = pytest.mark.usefixtures("ray_local")


def _config(tmp_path, **overrides):
    data = {
        "name": "t",
        "trainable": "tests.trainables:quadratic",
        "objective": {"metric": "loss", "direction": "minimize"},
        "budget": {"steps": 40, "report_every": 4, "checkpoint_every": 20},
        "search": {"sampler": "tpe", "seed": 3, "n_trials": 6},
        "hyperparams": {"learning_rate": {"kind": "constant", "value": {"loguniform": [1e-6, 1.0]}}},
        "max_concurrent": 2,
        "storage": str(tmp_path / "run"),
    }
    data.update(overrides)
    return parse_config(data, "test.yaml")


def _trials(config):
    return {r["number"]: r for r in RunRecords(config.run_dir()).read("trials").to_pylist()}


def test_pruning_stops_bad_trials_early(tmp_path):
    config = _config(tmp_path, search={"sampler": "random", "seed": 0, "n_trials": 10},
                     pruner={"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 4},
                     max_concurrent=1)
    Sweep(config).run()
    trials = _trials(config)
    pruned = [t for t in trials.values() if t["state"] == "PRUNED"]
    assert len(trials) == 10 and pruned
    assert all(t["last_step"] < config.budget.steps for t in pruned)
    history = RunRecords(config.run_dir()).read("history").to_pylist()
    for t in pruned:
        steps = [h["step"] for h in history if h["trial"] == t["number"]]
        assert max(steps) == t["last_step"] < config.budget.steps


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    config = _config(tmp_path, trainable="tests.trainables:flaky",
                     params={"explode": {"choice": [True, False]}},
                     search={"sampler": "random", "seed": 1, "n_trials": 8})
    summary = Sweep(config).run()
    trials = _trials(config)
    failed = [t for t in trials.values() if t["state"] == "FAIL"]
    completed = [t for t in trials.values() if t["state"] == "COMPLETE"]
    assert failed and completed and len(trials) == 8
    assert all("the loss exploded" in t["error"] for t in failed)
    assert all(json.loads(t["params"])["explode"] for t in failed)
    assert summary.counts["FAIL"] == len(failed)


def test_retries_rerun_a_raising_trial_under_the_same_number(tmp_path):
    config = _config(tmp_path, trainable="tests.trainables:fails_once",
                     search={"sampler": "random", "seed": 0, "n_trials": 2}, retries=1,
                     params={"marker_dir": str(tmp_path)})
    Sweep(config).run()
    trials = _trials(config)
    assert [t["state"] for t in trials.values()] == ["COMPLETE", "COMPLETE"]
    for t in trials.values():
        (entry,) = json.loads(t["restart_log"])
        assert entry["reason"].startswith("retry after RuntimeError: first attempt fails")


def test_a_superseded_worker_stops_without_recording_the_trial(tmp_path):
    config = _config(tmp_path, trainable="tests.trainables:claimed_midway",
                     budget={"steps": 40, "report_every": 4, "checkpoint_every": 2},
                     search={"sampler": "random", "seed": 0, "n_trials": 1})
    events = []
    sweep = Sweep(config, on_event=lambda kind, info: events.append((kind, info)))
    sweep.run()
    superseded = [info for kind, info in events if kind == "superseded"]
    assert [info["number"] for info in superseded] == [0]
    assert "claimed by writer 'the replacement'" in superseded[0]["reason"]
    assert not [info for kind, info in events if kind == "finished"]
    # The trial belongs to its new worker: not told, and only the checkpoint from before the claim.
    (trial,) = sweep.study.get_trials(deepcopy=False)
    assert trial.state.name == "RUNNING"
    root = os.path.join(config.run_dir(), "checkpoints", "trial-00000")
    assert sorted(os.listdir(root)) == ["ckpt-000000002.arrow", "owner.json"]


def test_background_saves_keep_the_newest_and_the_best_checkpoint(tmp_path):
    config = _config(tmp_path, trainable="tests.trainables:valley",
                     budget={"steps": 40, "report_every": 4, "checkpoint_every": 8},
                     search={"sampler": "random", "seed": 0, "n_trials": 1},
                     checkpoint={"keep_last": 1, "keep_best": 1, "async_save": True})
    Sweep(config).run()
    assert _trials(config)[0]["state"] == "COMPLETE"
    root = os.path.join(config.run_dir(), "checkpoints", "trial-00000")
    # checkpoints at 8, 16, 24, 32 and the final one at 40, with loss |step - 18| = 10, 2, 6, 14,
    # 22: 16 is the best, 40 the last
    assert sorted(os.listdir(root)) == ["ckpt-000000016.arrow", "ckpt-000000040.arrow", "owner.json"]
    from runner.checkpoint import read_checkpoint

    assert read_checkpoint(os.path.join(root, "ckpt-000000016.arrow")).metadata["metrics"] == {
        "loss": 2.0}


def test_conditional_space_samples_only_the_chosen_branch(tmp_path):
    lr = {"choice": [
        {"kind": "cosine_decay", "init_value": {"loguniform": [1e-4, 1e-1]}, "decay_steps": 40},
        {"kind": "wsd", "peak_value": {"loguniform": [1e-4, 1e-1]}, "warmup_steps": {"int": [0, 10]},
         "stable_steps": 10, "decay_steps": 10, "decay_type": {"choice": ["linear", "1-sqrt"]}}]}
    config = _config(tmp_path, hyperparams={"learning_rate": lr},
                     search={"sampler": "random", "seed": 2, "n_trials": 8})
    Sweep(config).run()
    import optuna

    study = optuna.load_study(study_name="t", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal"))))
    kinds = set()
    for trial in study.trials:
        kind = trial.params["hyperparams.learning_rate"]
        kinds.add(kind)
        spec = trial.user_attrs["schedule_specs"]["learning_rate"]
        assert spec["kind"] == kind
        other = "wsd" if kind == "cosine_decay" else "cosine_decay"
        assert not any(name.startswith(f"hyperparams.learning_rate.{other}") for name in trial.params)
        if kind == "wsd":
            assert spec["decay_type"] == trial.params["hyperparams.learning_rate.wsd.decay_type"]
    assert kinds == {"cosine_decay", "wsd"}


def test_results_are_readable_by_duckdb_and_hold_applied_hyperparameters(tmp_path):
    config = _config(tmp_path, trainable="examples.digits_torch:train",
                     budget={"steps": 30, "report_every": 10, "checkpoint_every": 15},
                     hyperparams={"learning_rate": {"kind": "linear", "init_value": 1e-2,
                                                    "end_value": {"uniform": [1e-4, 1e-3]},
                                                    "transition_steps": 30},
                                  "weight_decay": 1e-4},
                     objective={"metric": "val_loss"},
                     search={"sampler": "random", "seed": 0, "n_trials": 2},
                     params={"width": 16})
    Sweep(config).run()
    run = config.run_dir()
    rows = duckdb.sql(f"select number, state, value, json_extract_string(schedules, "
                      f"'$.learning_rate.kind') as kind from read_parquet('{run}/trials/*.parquet') "
                      f"order by number").fetchall()
    assert [(r[0], r[1], r[3]) for r in rows] == [(0, "COMPLETE", "linear"), (1, "COMPLETE", "linear")]
    applied = duckdb.sql(f"select trial, step, value from read_parquet('{run}/applied/*.parquet') "
                         f"where hyperparameter = 'learning_rate' order by trial, step").fetchall()
    specs = {r["number"]: json.loads(r["schedules"]) for r in _trials(config).values()}
    import schedules

    for trial, step, value in applied:
        assert value == pytest.approx(schedules.from_spec(specs[trial]["learning_rate"])(step))
    history = duckdb.sql(f"select count(*) from read_parquet('{run}/history/*.parquet') "
                         f"where metric = 'val_accuracy'").fetchall()[0][0]
    assert history == 2 * 3


def test_same_seed_and_one_at_a_time_reproduce_the_sweep(tmp_path):
    outcomes = []
    for attempt in ("a", "b"):
        config = _config(tmp_path, trainable="tests.trainables:counting", max_concurrent=1,
                         storage=str(tmp_path / attempt),
                         search={"sampler": "tpe", "seed": 7, "n_trials": 5},
                         pruner={"kind": "median", "n_startup_trials": 2})
        Sweep(config).run()
        outcomes.append([(t["params"], t["value"], t["state"]) for _, t in sorted(_trials(config).items())])
    assert outcomes[0] == outcomes[1]


def test_quickstart_end_to_end_through_the_cli(tmp_path):
    """The README's quickstart, through the real command, on its own local Ray."""
    config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sweeps", "quickstart.yaml")
    result = subprocess.run([sys.executable, "-m", "runner.cli", "run", config], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart"
    trials = RunRecords(str(run)).read("trials").to_pylist()
    states = [t["state"] for t in trials]
    assert len(trials) == 20 and states.count("COMPLETE") >= 4 and "PRUNED" in states
    best = json.loads((run / "best.json").read_text())
    assert best["schedules"]["learning_rate"]["kind"] in ("warmup_cosine_decay", "wsd")
    assert {p.name for p in (run / "plots").iterdir()} >= {"history.png", "curves.png", "schedules.png"}
    assert "best trials" in result.stdout
