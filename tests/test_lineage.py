"""Forks: a trial continued from another's checkpoint, exactly, with a schedule that agrees."""

from __future__ import annotations

import json

import pytest

from runner.checkpoint import read_checkpoint
from runner.config import parse_config
from runner.control import ControlChannel
from runner.driver import Sweep
from runner.lineage import ForkError, plan_fork
from runner.rundir import RunDir
from tests.test_preemption import _data, _outcome

pytestmark = pytest.mark.usefixtures("ray_local")
WSD = {"kind": "wsd", "peak_value": {"loguniform": [3e-3, 1e-2]}, "warmup_steps": 10,
       "stable_steps": 80, "decay_steps": 30, "decay_type": "1-sqrt"}


def _config(run_dir):
    return parse_config(_data(run_dir, "examples.digits_torch:train",
                              hyperparams={"learning_rate": WSD, "weight_decay": 1e-4},
                              checkpoint={"keep_last": 10}), "fork.yaml")


@pytest.fixture(scope="module")
def parent_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fork") / "run"
    Sweep(_config(run_dir)).run()
    return run_dir


def _specs(run_dir, number):
    import json

    return json.loads(_outcome(run_dir)[3][number]["schedules"])


def test_a_fork_that_keeps_the_schedule_finishes_identically_to_its_parent(parent_run):
    run = RunDir(str(parent_run))
    specs = plan_fork(run, 0, _specs(parent_run, 0), 60, [])
    ControlChannel(run).request("fork", 0, at=60, specs=specs)
    Sweep(_config(parent_run)).run()  # a stopped sweep runs the fork when it is resumed
    history, applied, states, trials = _outcome(parent_run)
    assert states[1] == states[0] and trials[1]["parent"] == 0 and trials[1]["parent_step"] == 60
    after = lambda rows, n: [r[1:] for r in rows if r[0] == n and r[1] > 60]  # noqa: E731
    assert after(history, 1) == after(history, 0) and after(applied, 1) == after(applied, 0)
    assert min(r[1] for r in history if r[0] == 1) == 70  # its history starts after the fork
    final = read_checkpoint(str(parent_run / trials[1]["checkpoint"]))
    lineage = final.metadata["parent"]
    assert lineage["trial"] == 0 and lineage["step"] == 60
    assert lineage["checkpoint"] == "checkpoints/trial-00000/ckpt-000000060.arrow"
    assert lineage["digest"].startswith("xxh3_64:")


def test_a_fork_may_extend_a_wsd_stable_phase_but_not_change_a_past(parent_run):
    run = RunDir(str(parent_run))
    parent = _specs(parent_run, 0)
    longer = plan_fork(run, 0, parent, 60, ["hyperparams.learning_rate.stable_steps=200"])
    assert longer["learning_rate"]["stable_steps"] == 200
    with pytest.raises(ForkError, match=r"hyperparams.learning_rate: the new schedule differs "
                                        r"from trial 0's at step 1, before the fork step 60"):
        plan_fork(run, 0, parent, 60, ["hyperparams.learning_rate.peak_value=0.5"])
    with pytest.raises(ForkError, match=r"trial 0 has no checkpoint at step 55 \(it has: 20, "):
        plan_fork(run, 0, parent, 55, [])
    with pytest.raises(ForkError, match="no schedule for 'learnin_rate'"):
        plan_fork(run, 0, parent, 60, ["hyperparams.learnin_rate.stable_steps=1"])


def test_sweep_fork_through_the_cli_on_a_live_sweep_and_refusals(parent_run, tmp_path, capsys):
    import yaml

    from runner.cli import main

    run_dir = tmp_path / "live"
    data = _data(run_dir, "examples.digits_torch:train", n_trials=2,
                 hyperparams={"learning_rate": WSD, "weight_decay": 1e-4},
                 checkpoint={"keep_last": 10})
    (tmp_path / "live.yaml").write_text(yaml.safe_dump(data))
    (run_dir).mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data))
    asked = {}

    def fork_when_trial_0_is_done(kind, info):
        if kind == "finished" and info["number"] == 0 and not asked:
            asked["rc"] = main(["fork", str(run_dir), "0", "--at", "40",
                                "--set", "hyperparams.learning_rate.stable_steps=100"])
        if kind == "report" and info["number"] == 1 and info["step"] >= 60 and "running" not in asked:
            asked["running"] = main(["fork", str(run_dir), "1", "--at", "40"])  # still running

    Sweep(parse_config(data, "live.yaml"), on_event=fork_when_trial_0_is_done).run()
    assert asked == {"rc": 0, "running": 0}
    trials = _outcome(run_dir)[3]
    forks = sorted((t["parent"], t["parent_step"], t["state"]) for t in trials.values()
                   if t["parent"] is not None)
    assert sorted(trials) == [0, 1, 2, 3]  # forks take the next numbers, beyond n_trials: 2
    assert forks == [(0, 40, "COMPLETE"), (1, 40, "COMPLETE")]
    capsys.readouterr()
    assert main(["fork", str(run_dir), "0", "--at", "40",
                 "--set", "hyperparams.learning_rate.warmup_steps=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs from trial 0's at step 1, before the fork step 40" in err


def test_a_fork_killed_mid_run_still_finishes_identically_to_its_parent(tmp_path):
    import signal

    from tests.test_preemption import Signaller

    run_dir = tmp_path / "run"
    Sweep(_config(run_dir)).run()
    run = RunDir(str(run_dir))
    ControlChannel(run).request("fork", 0, at=40, specs=plan_fork(run, 0, _specs(run_dir, 0),
                                                                    40, []))
    killer = Signaller([70], signal.SIGKILL)  # between the fork's checkpoints at 60 and 80
    Sweep(_config(run_dir), on_event=killer).run()
    assert killer.sent == [70]
    history, applied, states, trials = _outcome(run_dir)
    assert states[1] == states[0] and trials[1]["lost"] == 1
    after = lambda rows, n: [r[1:] for r in rows if r[0] == n and r[1] > 40]  # noqa: E731
    assert after(history, 1) == after(history, 0) and after(applied, 1) == after(applied, 0)


def test_a_jax_fork_with_a_longer_stable_phase_continues_its_parent_exactly(tmp_path):
    """optax: the restored InjectStatefulHyperparamsState (every per-hyperparameter count) runs
    on with the child's schedule; until the parent's cooldown the two are the same run."""
    pytest.importorskip("optax")
    run_dir = tmp_path / "run"
    data = _data(run_dir, "examples.digits_jax:train", checkpoint={"keep_last": 10},
                 hyperparams={"learning_rate": {**WSD, "stable_steps": 60}, "weight_decay": 1e-4})
    Sweep(parse_config(data, "jax.yaml")).run()  # cooldown from step 70 to 100, then end value
    run = RunDir(str(run_dir))
    specs = plan_fork(run, 0, _specs(run_dir, 0), 40,
                      ["hyperparams.learning_rate.stable_steps=1000"])
    ControlChannel(run).request("fork", 0, at=40, specs=specs)
    Sweep(parse_config(data, "jax.yaml")).run()
    history = _outcome(run_dir)[0]
    rows = lambda n, lo, hi: [r[1:] for r in history if r[0] == n and lo < r[1] <= hi]  # noqa: E731
    assert rows(1, 40, 70) == rows(0, 40, 70)  # the same run until the parent's cooldown
    assert rows(1, 80, 120) != rows(0, 80, 120)  # then the child stays at its peak


def _wsd_data(run_dir, steps, stable, trainable="examples.digits_torch:train"):
    return _data(run_dir, trainable,
                 budget={"steps": steps, "report_every": 10, "checkpoint_every": 40},
                 hyperparams={"learning_rate": {**WSD, "peak_value": 5e-3, "stable_steps": stable},
                              "weight_decay": 1e-4, "b1": 0.9})


def test_sweep_extend_of_a_wsd_trial_equals_a_trial_planned_for_the_longer_budget(tmp_path,
                                                                                   capsys):
    """Also after a kill -9 of the extension's worker between its checkpoints (150)."""
    from runner.cli import main

    import yaml

    run_dir = tmp_path / "run"
    data = _wsd_data(run_dir, 120, 80,  # cooldown from the branch point 90 to 120
                     trainable="tests.held_trainables:digits_fork_killed_at_150")
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data))
    Sweep(parse_config(data, "x.yaml")).run()
    # the branch point is kept whatever the retention (keep_last 2: 80 and 120 otherwise)
    assert 90 in [int(p.stem[5:]) for p in (run_dir / "checkpoints/trial-00000").glob("*.arrow")]
    capsys.readouterr()
    assert main(["extend", str(run_dir), "0", "--steps", "240", "--run"]) == 0
    assert "trial 0: extend from step 90: resuming the sweep to run it" in capsys.readouterr().out
    twin = tmp_path / "twin"
    Sweep(parse_config(_wsd_data(twin, 240, 200), "twin.yaml")).run()
    history, applied, states, trials = _outcome(run_dir)
    assert trials[1]["parent"] == 0 and trials[1]["parent_step"] == 90
    assert trials[1]["lost"] == 1 and json.loads(trials[1]["restart_log"])[0]["from_step"] == 120
    assert states[1] == _outcome(twin)[2][0]  # the same value, bit for bit
    after = lambda rows, n: [r[1:] for r in rows if r[0] == n and r[1] > 90]  # noqa: E731
    assert after(history, 1) == after(_outcome(twin)[0], 0)
    assert after(applied, 1) == after(_outcome(twin)[1], 0)


def test_extend_refuses_what_it_cannot_extend(parent_run):
    run = RunDir(str(parent_run))
    cosine = {"learning_rate": {"kind": "cosine_decay", "init_value": 1e-3, "decay_steps": 120}}
    with pytest.raises(ForkError, match=r"no wsd schedule to extend \(hyperparams.learning_rate "
                                        r"is a cosine_decay\); a decay that ends at step 120"):
        from runner.lineage import plan_extend

        plan_extend(run, 0, cosine, 120, 240)
    with pytest.raises(ForkError, match="expected more than trial 0's budget"):
        plan_extend(run, 0, _specs(parent_run, 0), 120, 100)


def test_a_fork_stopped_mid_run_resumes_and_still_equals_its_parent(tmp_path, capsys):
    """A stranger's find: a fork interrupted mid-run was refused by every later resume (it has
    no sampled params for the config check)."""
    import yaml

    from runner.cli import main

    run_dir = tmp_path / "run"
    data = _data(run_dir, "examples.digits_torch:train",
                 hyperparams={"learning_rate": WSD, "weight_decay": 1e-4},
                 checkpoint={"keep_last": 10})
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data))
    Sweep(parse_config(data, "s.yaml")).run()
    assert main(["fork", str(run_dir), "0", "--at", "40"]) == 0
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    assert "pending fork of trial 0 from step 40" in capsys.readouterr().out
    holder = {}

    def stop_the_fork(kind, info):
        if kind == "report" and info["number"] == 1 and info["step"] >= 70 and "s" in holder:
            holder.pop("s").stop()

    sweep = Sweep(parse_config(data, "s.yaml"), on_event=stop_the_fork)
    holder["s"] = sweep
    sweep.run()
    assert 1 not in _outcome(run_dir)[3]  # stopped mid-run
    assert main(["resume", str(run_dir)]) == 0
    capsys.readouterr()
    assert main(["show", str(run_dir), "1"]) == 0
    assert "forked from trial 0 at step 40" in capsys.readouterr().out
    history, _, states, trials = _outcome(run_dir)
    assert states[1] == states[0] and trials[1]["restarts"] == 1
    after = lambda rows, n: [r[1:] for r in rows if r[0] == n and r[1] > 40]  # noqa: E731
    assert after(history, 1) == after(history, 0)
    # a fork at the end of the budget, and one whose cooldown leaves the budget, are told so
    assert main(["fork", str(run_dir), "0", "--at", "120"]) == 2
    assert "nothing left to run" in capsys.readouterr().err
    assert main(["fork", str(run_dir), "0", "--at", "80",
                 "--set", "hyperparams.learning_rate.stable_steps=500"]) == 0
    assert "this fork never cools down" in capsys.readouterr().out
