"""Cooldown fidelity: every rung score is a finished run, branched from the trial's trunk."""

from __future__ import annotations

import json
import os
import signal

import optuna
import pytest
import yaml

import schedules
from runner import cooldown
from runner.config import ConfigError, parse_config
from runner.driver import Sweep
from runner.lineage import replay_config
from runner.records import RunRecords
from runner.study import storage

WSD = {"kind": "wsd", "peak_value": {"loguniform": [3e-3, 3e-2]}, "warmup_steps": 5,
       "stable_steps": 67, "decay_steps": 18, "decay_type": "1-sqrt"}


def _data(run_dir, **overrides):
    data = {
        "name": "cool",
        "trainable": "examples.digits_torch:train",
        "objective": {"metric": "val_loss"},
        "budget": {"steps": 90, "report_every": 10, "checkpoint_every": 30},
        "search": {"sampler": "random", "seed": 0, "n_trials": 3},
        "pruner": {"kind": "asha", "min_resource": 20, "reduction_factor": 3},
        "fidelity": {"kind": "cooldown"},
        "hyperparams": {"learning_rate": WSD,
                        "weight_decay": {"kind": "cosine_decay", "init_value": 1e-3,
                                         "decay_steps": 90}},
        "params": {"width": 32},
        "max_concurrent": 2,
        "storage": str(run_dir),
    }
    data.update(overrides)
    return data


# --- the plan: rungs, trunks and branches (no Ray) -------------------------------------------

def test_rungs_are_the_halving_pruners_or_the_configs():
    assert cooldown.rungs(parse_config(_data("r"))) == [20, 60]
    given = _data("r", pruner={"kind": "median"}, fidelity={"kind": "cooldown", "rungs": [30]})
    assert cooldown.rungs(parse_config(given)) == [30]


def test_a_wsd_branch_keeps_its_own_cooldown_scaled_to_the_rung_and_agrees_with_its_trunk():
    config = parse_config(_data("r"))
    trunk = {"learning_rate": {**WSD, "peak_value": 0.01}, "weight_decay": 1e-3}
    assert cooldown.trunk_specs(config, trunk) == trunk  # a wsd ends in its cooldown already
    at, specs = cooldown.branch(config, trunk, 60)
    assert at == 60 - round(18 / 90 * 60)  # the wsd's own 20%, of 60 steps
    assert specs["learning_rate"] == schedules.cooldown(trunk["learning_rate"], at, 60, "1-sqrt")
    assert specs["weight_decay"] == 1e-3  # only fidelity.schedules cool down
    assert schedules.first_difference(trunk["learning_rate"], specs["learning_rate"], at) is None
    assert schedules.from_spec(specs["learning_rate"])(60) == 0.0
    assert cooldown.CooldownFidelity(config, None).checkpoint_steps(0, trunk) == [16, 48]


def test_hyperband_scores_each_trunk_at_its_own_brackets_rungs():
    """Optuna's HyperbandPruner puts a trial in a bracket by its number; bracket b judges it
    from min_resource * reduction_factor ** b on, so its branches start there too."""
    from runner.study import pruner

    config = parse_config(_data("r", pruner={"kind": "hyperband", "min_resource": 20,
                                             "reduction_factor": 3}))
    study = optuna.create_study(study_name=config.name, pruner=pruner(config))
    strategy = cooldown.CooldownFidelity(config, study)
    trunk = {"learning_rate": {**WSD, "peak_value": 0.01}, "weight_decay": 1e-3}
    seen = {}
    for number in range(12):
        bracket = cooldown._bracket(study, number)
        seen.setdefault(bracket, []).append(number)
        assert strategy.rungs_of(number) == {0: [20, 60], 1: [60]}[bracket]
        assert strategy.checkpoint_steps(number, trunk) == {0: [16, 48], 1: [48]}[bracket]
    assert set(seen) == {0, 1}  # both brackets among the first trials


def test_any_other_schedule_becomes_a_trunk_that_ends_in_the_fidelitys_cooldown():
    cosine = {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 0.01,
              "warmup_steps": 5, "decay_steps": 90, "end_value": 1e-5}
    config = parse_config(_data("r", fidelity={"kind": "cooldown", "fraction": 0.1,
                                               "decay_type": "linear"}))
    trunk = cooldown.trunk_specs(config, {"learning_rate": cosine})["learning_rate"]
    assert trunk == schedules.cooldown(cosine, 81, 90, "linear")
    at, branch = cooldown.branch(config, {"learning_rate": trunk}, 20)
    assert at == 18 and schedules.first_difference(trunk, branch["learning_rate"], at) is None
    assert schedules.from_spec(branch["learning_rate"])(20) == 1e-5


@pytest.mark.parametrize("change, message", [
    ({"search": {"strategy": "pbt", "population": 4, "interval_steps": 30}},
     "fidelity.kind: cooldown works with search.strategy optuna, got 'pbt'"),
    ({"pruner": {"kind": "hyperband"}}, "pruner.min_resource: expected a number of steps with "
                                        "fidelity.kind cooldown"),
    ({"pruner": {"kind": "asha"}}, "pruner.min_resource: expected a number of steps with "
                                   "fidelity.kind cooldown (the first rung; Optuna's 'auto', the "
                                   "default, would pick it from the first trial's reports)"),
    ({"hyperparams": {"learning_rate": {"choice": [WSD, {"kind": "reduce_on_plateau",
                                                         "init_value": 0.01}]}}},
     "hyperparams.learning_rate: a reduce_on_plateau schedule cannot be cooled down"),
    ({"fidelity": {"kind": "cooldown", "fracton": 0.3}},
     "fidelity.fracton: unknown key (did you mean 'fraction'?)"),
    # before: rungs 0, 0, ... (or -5, -15, ...) never reached the budget, and loading hung
    ({"pruner": {"kind": "asha", "min_resource": 0}},
     "pruner.min_resource: Input should be greater than or equal to 1 (got 0)"),
    ({"pruner": {"kind": "hyperband", "min_resource": -5}},
     "pruner.min_resource: Input should be greater than or equal to 1 (got -5)"),
    ({"hyperparams": {"learning_rate": {**WSD, "stable_steps": 47}}},
     "hyperparams.learning_rate: a wsd of 70 steps (warmup + stable + decay) with budget.steps "
     "90: expected its length to be the budget"),
    ({"pruner": {"kind": "hyperband", "min_resource": 20, "max_resource": 9}},
     "pruner.max_resource: expected at least min_resource (20), got 9"),
    ({"pruner": {"kind": "asha", "min_resource": 20, "max_resource": 60}},
     "pruner.max_resource: not used by asha"),
    ({"pruner": {"kind": "asha", "min_resource": 15}},
     "pruner.min_resource: rung 15: expected a multiple of budget.report_every (10)"),
    ({"pruner": {"kind": "median"}}, "fidelity.rungs: expected the steps to score trials at "
                                     "(pruner median defines none)"),
    ({"pruner": {"kind": "none"}, "fidelity": {"kind": "cooldown", "rungs": [40, 90]}},
     "fidelity.rungs: expected steps below budget.steps (90), got 90"),
    ({"pruner": {"kind": "none"}, "fidelity": {"kind": "cooldown", "rungs": [40, 20]}},
     "fidelity.rungs: expected strictly increasing steps, got [40, 20]"),
    ({"fidelity": {"kind": "cooldown", "schedules": ["lr"]}},
     "fidelity.schedules: 'lr' is not a key of hyperparams (have: learning_rate, weight_decay)"),
    ({"fidelity": {"fraction": 0.1}}, "fidelity.fraction: only used with kind cooldown"),
    ({"fidelity": {"kind": "cooldown", "fraction": 1.5}},
     "fidelity.fraction: Input should be less than 1"),
    ({"fidelity": {"kind": "colddown"}}, "fidelity.kind: Input should be 'truncate' or 'cooldown'"),
])
def test_cooldown_config_mistakes_are_one_line(change, message):
    data = _data("r")
    for key, value in change.items():
        data[key] = {**data[key], **value} if key == "search" else value
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "cool.yaml")
    assert str(caught.value).startswith("cool.yaml: ") and message in str(caught.value), \
        str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_later_rungs_branch_waits_for_the_earlier_rungs_verdict():
    """With branch points out of rung order (both at step 1 here), the rung-60 branch forked
    before rung 20's verdict and ran on for a trunk already pruned at 20."""
    from runner.strategy import Fork, SweepView, TrialView

    config = parse_config(_data("r", pruner={"kind": "none"},
                                fidelity={"kind": "cooldown", "rungs": [20, 60], "fraction": 0.99}))
    strategy = cooldown.CooldownFidelity(config, None)
    specs = {"learning_rate": {"kind": "constant", "value": 0.01}, "weight_decay": 1e-3}

    def view(trunk_step, first_branch_state=None):
        trials = {0: TrialView(number=0, state="running", params={}, schedules=specs, values={},
                               step=trunk_step, checkpoint_step=trunk_step, parent=None)}
        if first_branch_state:
            trials[1] = TrialView(number=1, state=first_branch_state, params={}, schedules={},
                                  values={"val_loss": 1.0}, step=20, checkpoint_step=20,
                                  parent={"trial": 0, "step": 1, "rung": 20})
        return SweepView(trials=lambda: trials, free_slots=2, checkpoints=lambda n: [])

    first = strategy.next(view(10))
    assert isinstance(first, Fork) and first.rung == 20 and first.step == 1
    assert not isinstance(strategy.next(view(10, "running")), Fork)  # rung 20 undecided
    assert not isinstance(strategy.next(view(10, "complete")), Fork)  # trunk not at 20 yet
    second = strategy.next(view(30, "complete"))  # passed rung 20: its verdict was to go on
    assert isinstance(second, Fork) and second.rung == 60 and second.step == 1


def test_dry_run_shows_each_trunks_rungs_and_branch_points(tmp_path, capsys):
    from runner.cli import main
    from runner.study import pruner

    path = tmp_path / "cool.yaml"
    data = _data(tmp_path / "run", search={"sampler": "random", "seed": 0, "n_trials": 2},
                 pruner={"kind": "hyperband", "min_resource": 20, "reduction_factor": 3})
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if "cooldown branches" in line]
    assert len(lines) == 2 and sum(line.startswith("trial ") for line in out.splitlines()) == 2
    study = optuna.create_study(study_name="cool", pruner=pruner(parse_config(data)))
    for number, line in enumerate(lines):  # the same brackets as the sweep's study gives
        expected = {0: "rung 20 from step 16, rung 60 from step 48", 1: "rung 60 from step 48"}
        assert line == f"cooldown branches: {expected[cooldown._bracket(study, number)]}", out


# --- sweeps on Ray ---------------------------------------------------------------------------

def _study(run_dir, config):
    return optuna.load_study(study_name=config.name, storage=storage(config))


def _replayed(config, run_dir, number, trials, tmp_path):
    """The value of trial ``number`` trained from scratch, alone, on its own schedule."""
    data = replay_config(config, number, trials, [], str(tmp_path / f"replay-{number}"))
    Sweep(parse_config(data, "replay.yaml")).run()
    (row,) = RunRecords(str(tmp_path / f"replay-{number}")).read("trials").to_pylist()
    return row["value"]


def _check(run_dir, tmp_path, data, also=()):
    """Every rung score is its branch's result, and every completed trunk, the last branch and
    the trials ``also`` equal standalone runs of their schedules (atol=0)."""
    config = parse_config(data)
    records = RunRecords(str(run_dir))
    trials = {r["number"]: r for r in records.read("trials").to_pylist()}
    branches = records.read("branches").to_pylist()
    trunks = {n: r for n, r in trials.items() if r["rung"] is None}
    assert len(trunks) == 3 and branches
    study = {t.number: t for t in _study(run_dir, config).trials}
    for row in branches:
        assert trials[row["branch"]]["rung"] == row["rung"] and row["state"] == "COMPLETE"
        assert row["from_step"] == cooldown.branch(config, json.loads(
            trunks[row["trial"]]["schedules"]), row["rung"])[0]
        assert study[row["trial"]].intermediate_values[row["rung"]] == row["value"]
        assert trials[row["branch"]]["value"] == row["value"]
    for number, trunk in trunks.items():  # a trunk's study values are its rung scores alone
        scored = sorted(r["rung"] for r in branches if r["trial"] == number)
        assert sorted(study[number].intermediate_values) == scored
        if trunk["state"] == "COMPLETE":
            assert scored == [20, 60]
    finished = {n for n, r in trunks.items() if r["state"] == "COMPLETE"}
    assert finished
    for number in sorted(finished | {branches[-1]["branch"]} | {
            n for n in also if trials[n]["state"] == "COMPLETE"}):
        assert _replayed(config, run_dir, number, trials, tmp_path) == trials[number]["value"]
    return trials, branches


@pytest.mark.usefixtures("ray_local")
def test_a_cooldown_sweep_scores_rungs_by_branches_that_equal_runs_planned_for_that_length(
        tmp_path):
    run_dir = tmp_path / "run"
    data = _data(run_dir)
    summary = Sweep(parse_config(data, "cool.yaml")).run()
    trials, branches = _check(run_dir, tmp_path, data)
    best = min((r for r in trials.values() if r["rung"] is None and r["state"] == "COMPLETE"),
               key=lambda r: r["value"])
    assert summary.best["number"] == best["number"]  # a branch is never the best trial
    # the curves: trunks alone, the best ones with their branches; a branch is no trial's point
    from runner.plots import plot_run
    from tests.test_plots import _shown

    (run_dir / "config.yaml").write_text(yaml.safe_dump(data))  # as sweep run writes it
    plot_run(str(run_dir), str(tmp_path / "plots"))
    (curves,) = _shown(tmp_path / "plots" / "curves.png")
    labels = {s["label"] for s in curves["series"]}
    assert not {f"trial {r['branch']}" for r in branches} & labels
    assert {f"cooldown branch {r['branch']} of trial {best['number']}" for r in branches
            if r["trial"] == best["number"]} <= labels
    assert any(label.startswith("cooldown branch") for label in labels)
    (history,) = _shown(tmp_path / "plots" / "history.png")
    assert sum(s["points"] for s in history["series"] if s["label"] == "complete") == \
        sum(r["state"] == "COMPLETE" for r in trials.values() if r["rung"] is None)
    # the branch checkpoints its trunk forked from are kept whatever keep_last says
    kept = os.listdir(run_dir / "checkpoints" / f"trial-{best['number']:05d}")
    assert {"ckpt-000000016.arrow", "ckpt-000000048.arrow"} <= set(kept)


@pytest.mark.usefixtures("ray_local")
def test_hyperband_prunes_on_branches_at_each_trunks_bracket_rungs(tmp_path):
    from runner.study import pruner

    run_dir = tmp_path / "run"
    data = _data(run_dir, search={"sampler": "tpe", "seed": 0, "n_trials": 5},
                 pruner={"kind": "hyperband", "min_resource": 20, "reduction_factor": 3})
    config = parse_config(data, "cool.yaml")
    Sweep(config).run()
    records = RunRecords(str(run_dir))
    trials = {r["number"]: r for r in records.read("trials").to_pylist()}
    branches = records.read("branches").to_pylist()
    study = _study(run_dir, config)
    strategy = cooldown.CooldownFidelity(config, optuna.load_study(
        study_name=config.name, storage=storage(config), pruner=pruner(config)))
    by_trial = {t.number: t for t in study.trials}
    trunks = [n for n, r in trials.items() if r["rung"] is None]
    assert len(trunks) == 5
    for number in trunks:
        own = strategy.rungs_of(number)
        scored = sorted(r["rung"] for r in branches if r["trial"] == number)
        assert scored == own[:len(scored)] and sorted(by_trial[number].intermediate_values) == \
            scored  # scored at its bracket's rungs, in order, and by branches alone
        if trials[number]["state"] == "COMPLETE":
            assert scored == own
        else:  # pruned at its last scored rung, by its branch's score
            assert trials[number]["state"] == "PRUNED" and scored
    done = [n for n in trunks if trials[n]["state"] == "COMPLETE"]
    assert done
    assert _replayed(config, run_dir, done[0], trials, tmp_path) == trials[done[0]]["value"]


@pytest.mark.usefixtures("ray_local")
def test_a_users_fork_in_a_cooldown_sweep_runs_to_its_own_end_unscored(tmp_path, capsys):
    """Before: `sweep extend` made a trial scored at rungs before its start, whose branch had no
    checkpoint, and the sweep stopped at every resume."""
    from runner.cli import main

    run_dir = tmp_path / "run"
    data = _data(run_dir, search={"sampler": "random", "seed": 0, "n_trials": 1},
                 pruner={"kind": "none"}, fidelity={"kind": "cooldown", "rungs": [20, 60]},
                 hyperparams={"learning_rate": WSD, "weight_decay": 1e-3})
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data))
    Sweep(parse_config(data, "cool.yaml")).run()
    capsys.readouterr()
    assert main(["extend", str(run_dir), "0", "--steps", "180", "--run"]) == 0, \
        capsys.readouterr()
    records = RunRecords(str(run_dir))
    trials = {r["number"]: r for r in records.read("trials").to_pylist()}
    (extension,) = [r for r in trials.values() if r["parent"] == 0 and r["rung"] is None]
    assert extension["state"] == "COMPLETE" and extension["parent_step"] == 72
    assert {r["trial"] for r in records.read("branches").to_pylist()} == {0}
    branch = next(r["number"] for r in trials.values() if r["rung"] is not None)
    assert main(["fork", str(run_dir), str(branch), "--at", "30"]) == 2  # a branch is no trial
    assert f"trial {branch} is a cooldown branch (it scores trial 0 at rung" in \
        capsys.readouterr().err
    capsys.readouterr()  # replay outside PBT: no word of exploits
    assert main(["replay", str(run_dir), "0", "--out", str(tmp_path / "replay.yaml")]) == 0
    said = capsys.readouterr().out
    assert "from scratch with its effective schedules, run dir" in said and "exploit" not in said


def test_a_branch_point_is_never_before_step_1():
    """A cooldown share near 1 (or a wsd that is all cooldown) put it at step 0, where no
    trunk has a checkpoint: the sweep stopped at its first rung."""
    config = parse_config(_data("r", pruner={"kind": "none"},
                                fidelity={"kind": "cooldown", "rungs": [10], "fraction": 0.99}))
    constant = {"learning_rate": {"kind": "constant", "value": 0.01}, "weight_decay": 1e-3}
    assert cooldown.branch(config, constant, 10)[0] == 1
    all_decay = {"kind": "wsd", "peak_value": 0.01, "warmup_steps": 0, "stable_steps": 0,
                 "decay_steps": 90}
    assert cooldown.branch(config, {**constant, "learning_rate": all_decay}, 10)[0] == 1


class _Killer:
    """kill -9 of the worker of the first branch at its first report, and of the first trunk
    past its first rung between checkpoints: each mid-run, neither at a checkpoint."""

    def __init__(self):
        self.pids, self.branches, self.killed, self.requeued = {}, set(), [], {}

    def __call__(self, kind, info):
        number = info.get("number")
        if kind == "placed":
            self.pids[number] = info["pid"]
        elif kind == "forked":
            self.branches.add(number)
        elif kind == "requeued":
            self.requeued[number] = info["from_step"]
        elif kind == "report" and number in self.pids:
            branch = number in self.branches
            due = (branch and not any(b for b, _ in self.killed)) or \
                (not branch and info["step"] == 40 and not any(not b for b, _ in self.killed))
            if due:
                os.kill(self.pids.pop(number), signal.SIGKILL)
                self.killed.append((branch, number))


@pytest.mark.usefixtures("ray_local")
def test_kill_9_of_a_trunk_and_of_a_branch_worker_changes_no_result(tmp_path):
    run_dir, killer = tmp_path / "run", _Killer()
    data = _data(run_dir, max_concurrent=1)
    Sweep(parse_config(data, "cool.yaml"), on_event=killer).run()
    trials, _ = _check(run_dir, tmp_path, data, also=[n for _, n in killer.killed])
    assert [branch for branch, _ in killer.killed] == [True, False], killer.killed
    for _, number in killer.killed:  # each worker died mid-run, and the run went on
        assert trials[number]["lost"] == 1 and trials[number]["state"] in ("COMPLETE", "PRUNED")
    branch = killer.killed[0][1]  # said to resume from its first checkpoint, its branch point
    assert killer.requeued[branch] == trials[branch]["parent_step"] > 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("when, said", [
    ("parent", "killed after parent"),  # a branch forked: its trial made, not yet run
    ("checkpoint:0:48", "killed at the checkpoint of trial 0 at step 48"),  # a branch point
])
@pytest.mark.usefixtures("ray_local")
def test_a_driver_killed_mid_fidelity_resumes_with_every_score_a_branchs(tmp_path, when, said):
    import subprocess
    import sys

    run_dir, path = tmp_path / "run", tmp_path / "cool.yaml"
    data = _data(run_dir, max_concurrent=1)
    path.write_text(yaml.safe_dump(data))
    killed = subprocess.run([sys.executable, "-m", "tests.killed_driver", when, "run", str(path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL and said in killed.stdout, killed.stdout[-2000:]
    resumed = subprocess.run([sys.executable, "-m", "runner.cli", "resume", str(run_dir)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    _, branches = _check(run_dir, tmp_path, data)
    scored = [(r["trial"], r["rung"]) for r in branches]
    assert len(scored) == len(set(scored))  # each rung scored once: no branch forked twice


@pytest.mark.usefixtures("ray_local")
def test_a_trunk_that_does_not_report_the_objective_at_a_rung_stops_the_sweep(tmp_path):
    """Before: such trunks were never scored nor paused, and got branches or not by timing."""
    data = _data(tmp_path / "run", trainable="tests.trainables:objective_at_the_end",
                 objective={"metric": "loss"}, pruner={"kind": "none"},
                 budget={"steps": 40, "report_every": 10, "checkpoint_every": 40},
                 fidelity={"kind": "cooldown", "rungs": [20]}, max_concurrent=1,
                 hyperparams={"learning_rate": {**WSD, "stable_steps": 27, "decay_steps": 8}})
    sweep = Sweep(parse_config(data, "cool.yaml"))
    sweep.run()
    assert sweep.abort_reason == (
        "<config>: fidelity.kind cooldown: trial 0 reported no 'loss' at rung 20 (it reported "
        "seen); a trial is scored at every rung: report the objective there")
