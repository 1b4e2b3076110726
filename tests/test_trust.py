"""The runner's defects of issue 11, each reproduced end to end on the session's local Ray.

Hangs carry a pytest timeout: before the fix they never returned.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import optuna
import pytest
import yaml

from runner.checkpoint import read_checkpoint
from runner.cli import main
from runner.config import parse_config
from runner.driver import Sweep
from runner.records import RunRecords
from tests.held_trainables import kill_the_driver_when_held
from tests.test_preemption import Signaller, _data, _outcome

pytestmark = pytest.mark.usefixtures("ray_local")


def _quick(tmp_path, **overrides):
    data = {
        "name": "trust", "trainable": "tests.trainables:quadratic",
        "objective": {"metric": "loss"},
        "budget": {"steps": 20, "report_every": 5, "checkpoint_every": 10},
        "search": {"sampler": "random", "seed": 0, "n_trials": 4},
        "hyperparams": {"learning_rate": {"kind": "constant", "value": {"loguniform": [1e-4, 1.0]}}},
        "storage": str(tmp_path / "run"),
    }
    data.update(overrides)
    return data


def _sweep(data, events=None):
    sweep = Sweep(parse_config(data, "trust.yaml"),
                  on_event=(lambda kind, info: events.append((kind, info))) if events is not None
                  else None)
    sweep.run()
    return sweep


def _trials(run_dir):
    return {t["number"]: t for t in RunRecords(str(run_dir)).read("trials").to_pylist()}


def _notices(events):
    return [info["message"] for kind, info in events if kind == "notice"]


@pytest.mark.timeout(120)
def test_more_concurrent_trials_than_the_cluster_holds_queue_and_finish(tmp_path):
    """Defect 1: three trials of 2 CPUs on the session's 4 CPUs: the third actor never placed."""
    events = []
    _sweep(_quick(tmp_path, resources={"cpu": 2}, max_concurrent=3), events)
    assert [t["state"] for t in _trials(tmp_path / "run").values()] == ["COMPLETE"] * 4
    assert _notices(events) == ["max_concurrent 3: the cluster holds 2 trials of cpu 2 at a "
                                "time; the others queue"]


def test_resources_no_node_can_hold_are_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(_quick(tmp_path, resources={"cpu": 64})))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sweep: {path}: resources: a trial asks for cpu 64, which this "
                          f"machine's Ray cannot hold") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.timeout(180)
def test_migrate_with_no_other_node_says_so_and_the_trial_goes_on(tmp_path):
    """Defect 2: on one node a migration 'lost its worker' and the sweep never ended."""
    run_dir = tmp_path / "run"
    events, asked = [], {}

    def migrate(kind, info):
        events.append((kind, info))
        if kind == "report" and info["step"] >= 40 and not asked:
            asked["rc"] = main(["migrate", str(run_dir), "0"])

    config = parse_config(_data(run_dir, "examples.digits_torch:train"), "m.yaml")
    Sweep(config, on_event=migrate).run()
    assert asked == {"rc": 0}
    assert _notices(events) == ["trial 0: no other node can take it; it goes on where it is"]
    trial = _trials(run_dir)[0]
    assert trial["state"] == "COMPLETE" and json.loads(trial["restart_log"]) == []


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_first_interrupt_is_acknowledged_and_stops_resumably(tmp_path, sig):
    """Defect 3 and 21: Ctrl-C printed nothing for over 35 s; SIGTERM dumped Ray's C++ stack."""
    run_dir = tmp_path / "run"
    path = tmp_path / "stop.yaml"
    path.write_text(yaml.safe_dump(_data(run_dir, "tests.held_trainables:digits_held_after_40",
                                         n_trials=2, max_concurrent=2)))
    driver = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(path)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    lines = []  # trial 0 holds forever on its first attempt: only the second signal ends the run
    for line in driver.stdout:
        lines.append(line)
        if "held after the checkpoint of step 40" in line:
            break
    driver.send_signal(sig)
    for line in driver.stdout:
        lines.append(line)
        if line.startswith("stopping: checkpointing"):
            # acknowledged before anything else happens; a second signal now exits at once
            driver.send_signal(sig)
            break
    rest = driver.stdout.read()
    driver.wait(timeout=120)
    output = "".join(lines) + rest
    assert any(line.startswith("stopping: checkpointing") for line in lines), output
    assert "Token authentication" not in output and "*** SIGTERM" not in output
    assert "Traceback" not in output, output
    assert driver.returncode == 130 and "sweep: stopped at once; continue with: sweep resume" \
        in output, output
    if sig == signal.SIGTERM:
        return  # the resume after it is the SIGINT case's
    # trial 0 was held mid-trial, so the sweep is resumable and ends exactly
    result = subprocess.run([sys.executable, "-m", "runner.cli", "resume", str(run_dir)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert [t["state"] for t in _trials(run_dir).values()] == ["COMPLETE", "COMPLETE"]


def test_an_invalid_sampled_schedule_fails_that_trial_and_the_sweep_goes_on(tmp_path):
    """Defect 4: a point whose schedule is invalid while every corner is valid."""
    data = _quick(tmp_path, search={"sampler": "random", "seed": 1, "n_trials": 8},
                  hyperparams={"learning_rate": {
                      "kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 1e-2,
                      "warmup_steps": {"int": [0, 900]}, "decay_steps": {"int": [100, 1000]}}})
    _sweep(data)
    trials = _trials(tmp_path / "run")
    failed = [t for t in trials.values() if t["state"] == "FAIL"]
    assert len(trials) == 8 and failed and len(failed) < 8
    assert all(t["error"].startswith("invalid schedule: hyperparams.learning_rate: "
                                     "warmup_cosine_decay.decay_steps") for t in failed)
    assert all("\n" not in t["error"] for t in failed)
    study = optuna.load_study(study_name="trust", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal"))))
    states = {t.number: t.state.name for t in study.trials}
    assert states == {n: ("FAIL" if t["state"] == "FAIL" else "COMPLETE") for n, t in trials.items()}


def test_a_worker_lost_more_than_max_restarts_fails_its_trial_alone(tmp_path):
    """Defect 5: retries: 1 with a worker lost too often crashed in _lost (no trials table)."""
    _sweep(_quick(tmp_path, trainable="tests.trainables:dies_if_first", retries=1,
                  max_restarts=1, search={"sampler": "random", "seed": 0, "n_trials": 3}))
    trials = _trials(tmp_path / "run")
    assert trials[0]["state"] == "FAIL" and trials[0]["error"].startswith("worker lost 2 times")
    assert (trials[0]["lost"], trials[0]["retries"]) == (1, 0)
    assert [trials[n]["state"] for n in (1, 2)] == ["COMPLETE", "COMPLETE"]


def test_a_jax_trainable_on_plain_optax_runs(tmp_path):
    """Defect 6: a trainable not using schedules.optax failed at its first report."""
    pytest.importorskip("optax")
    _sweep(_quick(tmp_path, trainable="tests.jax_trainables:plain_optax", hyperparams={},
                  search={"sampler": "random", "seed": 0, "n_trials": 1}))
    (trial,) = _trials(tmp_path / "run").values()
    assert trial["state"] == "COMPLETE", trial["error"]


def test_a_trainable_that_declares_no_state_starts_over_and_says_so_once(tmp_path):
    """Defect 8: it resumed at the checkpoint's step with fresh weights (a wrong result)."""
    data = _data(tmp_path / "twin", "tests.trainables:counting", objective={"metric": "loss"},
                 hyperparams={"learning_rate": {"kind": "constant", "value": 0.1}})
    _sweep(data)
    events = []
    killer = Signaller([30, 70], signal.SIGKILL)
    data = {**data, "storage": str(tmp_path / "killed")}
    Sweep(parse_config(data, "c.yaml"),
          on_event=lambda kind, info: (events.append((kind, info)), killer(kind, info))).run()
    assert killer.sent == [30, 70]
    assert _outcome(tmp_path / "killed")[:3] == _outcome(tmp_path / "twin")[:3]
    notes = [m for m in _notices(events) if "declares no state" in m]
    assert notes == ["trial 0: the trainable declares no state (ctx.track / ctx.track_pytree), "
                     "so it starts over from step 0 instead of resuming"]
    log = json.loads(_trials(tmp_path / "killed")[0]["restart_log"])
    assert [e["resumed_at"] for e in log] == [0, 0] and log[0]["note"] == notes[0]


def test_a_completed_trial_keeps_its_final_state(tmp_path, capsys):
    """Defect 9: the best model could not be had back."""
    torch = pytest.importorskip("torch")
    run_dir = tmp_path / "run"
    _sweep(_data(run_dir, "examples.digits_torch:train"))
    trial = _trials(run_dir)[0]
    assert trial["checkpoint"] == "checkpoints/trial-00000/ckpt-000000120.arrow"
    ckpt = read_checkpoint(str(run_dir / trial["checkpoint"]))
    assert ckpt.metadata["step"] == 120 and ckpt.metadata["trial"] == 0
    from examples.data import digits
    from examples.digits_torch import make_model

    model = make_model(json.loads(trial["params"])["width"])
    model.load_state_dict(ckpt.state["objects"]["model"])
    _, _, x_val, y_val = (torch.from_numpy(a) for a in digits())
    with torch.no_grad():
        val_loss = torch.nn.functional.cross_entropy(model(x_val), y_val).item()
    assert val_loss == trial["value"]  # the very model the trial's value was measured on
    capsys.readouterr()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(_data(run_dir, "examples.digits_torch:train")))
    assert main(["show", str(run_dir), "0"]) == 0
    assert f"final checkpoint: {run_dir / trial['checkpoint']}" in capsys.readouterr().out


def test_a_run_dir_copied_elsewhere_resumes_from_its_own_checkpoints(tmp_path):
    """Defect 13: the study held absolute paths, so the copy resumed from the original's files."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    stopper = {}

    def stop_mid_trial(kind, info):
        if kind == "report" and info["step"] >= 50 and "sweep" in stopper:
            stopper.pop("sweep").stop()

    data = _data(original, "examples.digits_torch:train")
    sweep = Sweep(parse_config(data, "a.yaml"), on_event=stop_mid_trial)
    stopper["sweep"] = sweep
    sweep.run()
    assert not _trials(original)
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    saved = max(int(p.stem.split("-")[1]) for p in (copy / "checkpoints" / "trial-00000").glob("*.arrow"))
    events = []
    _sweep({**data, "storage": str(copy)}, events)
    assert saved >= 50 and [info["step"] for kind, info in events if kind == "started"] == [saved]
    _sweep(_data(tmp_path / "twin", "examples.digits_torch:train"))
    assert _outcome(copy)[:3] == _outcome(tmp_path / "twin")[:3]
    assert not original.exists()


def test_an_edited_config_is_refused_with_the_changed_keys_and_nothing_written(tmp_path, capsys):
    """Defect 14: an edited search space was sampled into the old study, config.yaml overwritten."""
    path = tmp_path / "sweep.yaml"
    data = _quick(tmp_path, search={"sampler": "random", "seed": 0, "n_trials": 2})
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 0
    run_dir = tmp_path / "run"
    saved = (run_dir / "config.yaml").read_text()
    before = sorted(str(p) for p in run_dir.rglob("*"))
    edited = json.loads(json.dumps(data))
    edited["hyperparams"]["learning_rate"]["value"] = {"loguniform": [1e-3, 1.0]}
    edited["budget"]["steps"] = 40
    path.write_text(yaml.safe_dump(edited))
    capsys.readouterr()
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed budget.steps, hyperparams.learning_rate.value" in err
    assert (run_dir / "config.yaml").read_text() == saved
    assert sorted(str(p) for p in run_dir.rglob("*")) == before
    extended = {**data, "search": {**data["search"], "n_trials": 3}, "max_concurrent": 2}
    path.write_text(yaml.safe_dump(extended))
    assert main(["run", str(path)]) == 0  # more trials, more at a time: the same sweep, extended
    assert len(_trials(run_dir)) == 3


def test_a_run_dirs_own_config_edited_between_runs_is_refused_on_resume(tmp_path, capsys):
    """Before: sweep resume read the edited config.yaml and went on with it, unchecked."""
    data = _quick(tmp_path, search={"sampler": "random", "seed": 0, "n_trials": 2})
    _sweep(data)
    run_dir = tmp_path / "run"
    saved = json.loads(json.dumps(data))
    saved["budget"]["report_every"] = 10
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    before = sorted((str(p), p.stat().st_size) for p in run_dir.rglob("*"))
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 2
    assert capsys.readouterr().err == (
        f"sweep: {run_dir}: the config changed budget.report_every since this sweep began; "
        f"only search.n_trials, search.timeout, max_concurrent, resources, retries, "
        f"max_restarts, storage_shared, loggers may change (undo the change, or use another "
        f"name or storage for a new sweep)\n")
    assert sorted((str(p), p.stat().st_size) for p in run_dir.rglob("*")) == before


def test_a_misspelled_objective_stops_at_the_first_report_and_once_fixed_the_sweep_goes_on(
        tmp_path, capsys):
    """Before: the whole budget of the first trials was spent before 'never reported', and the
    fixed config was then refused as a changed objective."""
    path = tmp_path / "sweep.yaml"
    data = _quick(tmp_path, objective={"metric": "los"},
                  search={"sampler": "random", "seed": 0, "n_trials": 2},
                  budget={"steps": 400, "report_every": 5, "checkpoint_every": 10},
                  # every report waits for the driver: the stop lands long before the end
                  pruner={"kind": "median", "n_startup_trials": 1000})
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (f"sweep: stopped early: {path}: objective: metric 'los' is not among the "
                   f"metrics trial 0 reports (loss); did you mean 'loss'? (fix it, then: sweep "
                   f"run {path})")
    history = RunRecords(str(tmp_path / "run")).read("history").to_pylist()
    assert max(r["step"] for r in history) < 400  # stopped, not trained to the end
    path.write_text(yaml.safe_dump({**data, "objective": {"metric": "loss"}}))
    assert main(["run", str(path)]) == 0  # no value recorded yet: the objective may change
    assert [t["state"] for t in _trials(tmp_path / "run").values()] == ["COMPLETE", "COMPLETE"]


@pytest.mark.parametrize("where, problem", [
    ("a-file", "'{p}' is a file; expected a directory for the run dir"),
    ("a-file/run", "'{p}' cannot be made: '{t}/a-file' is a file"),
    ("notes", "'{p}' is a non-empty directory that is not a run dir (no config.yaml); expected a "
              "new directory or an existing run dir"),
    ("/proc/sweep-run", "'{p}' cannot be made: No such file or directory"),
    ("other", "'{p}' holds a config.yaml that is not a sweep config; expected a new directory "
              "or this sweep's run dir"),
    ("another", "'{p}' holds a config.yaml that is sweep 'b''s, not 'trust''s; expected a new "
                "directory or this sweep's run dir"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_storage_that_cannot_be_a_run_dir_is_one_line_before_anything_starts(
        tmp_path, capsys, where, problem, dry_run):
    """Before: a FileExistsError traceback once Ray had started (and --dry-run passed), or an
    unrelated directory used silently."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "other").mkdir()  # before: used as the run dir, its config.yaml replaced
    (tmp_path / "other" / "config.yaml").write_text("foo: bar\n")
    (tmp_path / "another").mkdir()
    (tmp_path / "another" / "config.yaml").write_text(yaml.safe_dump(
        {**_quick(tmp_path), "name": "b"}))
    path, storage = tmp_path / "sweep.yaml", tmp_path / where  # (an absolute where stays)
    path.write_text(yaml.safe_dump(_quick(tmp_path, storage=str(storage))))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["run", str(path)] + ["--dry-run"] * dry_run) == 2
    message = problem.format(p=storage, t=tmp_path)
    assert capsys.readouterr().err == f"sweep: {path}: storage: {message}\n"
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_a_sweep_that_ends_with_a_paused_trial_says_how_to_resume(tmp_path, capsys):
    """Defect 16: a sweep whose only trial was paused exited 1."""
    run_dir = tmp_path / "run"
    path = tmp_path / "p.yaml"
    data = _data(run_dir, "examples.digits_torch:train")
    path.write_text(yaml.safe_dump(data))
    stopper = {}

    def stop_mid_trial(kind, info):
        if kind == "report" and info["step"] >= 50 and "sweep" in stopper:
            stopper.pop("sweep").stop()

    sweep = Sweep(parse_config(data, str(path)), on_event=stop_mid_trial)
    stopper["sweep"] = sweep
    sweep.run()
    (run_dir / "config.yaml").write_text(path.read_text())
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    assert "stopped mid-trial (resumable from their checkpoints): trial 0" in capsys.readouterr().out
    assert main(["pause", str(run_dir), "0"]) == 0
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    assert f"paused trials 0; continue with: sweep resume {run_dir}" in capsys.readouterr().out
    assert main(["resume", str(run_dir)]) == 0
    assert "resuming paused trial 0 (sweep resume RUN_DIR TRIAL resumes one alone)" in \
        capsys.readouterr().err  # before: released silently
    assert _trials(run_dir)[0]["state"] == "COMPLETE"


def test_a_config_given_for_a_run_dir_or_the_other_way_round_says_which_command(tmp_path,
                                                                               capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_quick(tmp_path)))
    assert main(["resume", str(path)]) == 2
    assert capsys.readouterr().err == (f"sweep: {path}: not a run dir (no such directory; a "
                                       f"config file: sweep run {path})\n")
    assert main(["run", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"sweep: {tmp_path}: a directory, not a config file (a "
                                       f"run dir continues with: sweep resume {tmp_path})\n")


def test_the_first_trials_failing_alike_stop_the_sweep(tmp_path, capsys):
    """Defect 18: a typo failed every trial the same way, burning the whole budget."""
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(_quick(tmp_path, trainable="tests.trainables:typo",
                                          search={"sampler": "random", "seed": 0,
                                                  "n_trials": 20})))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "stopped early: the first trials all failed with: KeyError: 'learnin_rate'" in err
    assert len(_trials(tmp_path / "run")) == 3


def test_the_study_names_its_metrics_and_keeps_driver_bookkeeping_out_of_user_attrs(tmp_path):
    """Defect 20: optuna-dashboard showed 'Objective 0' and the driver's heartbeats."""
    _sweep(_quick(tmp_path, search={"sampler": "random", "seed": 0, "n_trials": 1}))
    study = optuna.load_study(study_name="trust", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal"))))
    assert study.metric_names == ["loss"]
    assert not study.user_attrs
    assert "driver" not in study.trials[0].user_attrs


def test_a_seeded_sweep_resumed_after_its_driver_died_samples_what_it_would_have(tmp_path):
    """Defect 11: a resumed seeded sampler started its sequence again and repeated points."""
    run_dir = tmp_path / "run"
    path = tmp_path / "seeded.yaml"
    data = _data(run_dir, "tests.held_trainables:digits_held_after_40", n_trials=3,
                 search={"sampler": "tpe", "seed": 5, "n_trials": 3})
    path.write_text(yaml.safe_dump(data))
    kill_the_driver_when_held(path, tmp_path)
    result = subprocess.run([sys.executable, "-m", "runner.cli", "resume", str(run_dir)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    twin = {**data, "storage": str(tmp_path / "twin"), "trainable": "examples.digits_torch:train"}
    _sweep(twin)
    resumed, straight = _trials(run_dir), _trials(tmp_path / "twin")
    assert [(t["params"], t["schedules"], t["value"]) for t in resumed.values()] == \
        [(t["params"], t["schedules"], t["value"]) for t in straight.values()]
    assert _outcome(run_dir)[:2] == _outcome(tmp_path / "twin")[:2]
    assert json.loads(resumed[0]["restart_log"])[0]["reason"] == "driver lost"


def test_the_console_script_imports_a_trainable_beside_the_config_and_dry_run_shows_real_points(
        tmp_path):
    """A stranger's first run: `sweep run my.yaml` with my_trainable.py in the same directory."""
    (tmp_path / "my_trainable.py").write_text(
        "def train(ctx):\n"
        "    for step in ctx.steps():\n"
        "        if ctx.report_due(step):\n"
        "            ctx.report(step + 1, loss=ctx.params['x'] ** 2)\n")
    data = _quick(tmp_path, trainable="my_trainable:train", hyperparams={},
                  params={"x": {"uniform": [-1.0, 1.0]}},
                  search={"sampler": "tpe", "seed": 4, "n_trials": 2})
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(data))
    sweep = os.path.join(os.path.dirname(sys.executable), "sweep")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    dry = subprocess.run([sweep, "run", "my.yaml", "--dry-run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    real = subprocess.run([sweep, "run", "my.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert real.returncode == 0, real.stderr[-2000:]
    assert "[I " not in real.stderr  # Optuna's info lines stay out of the user's way
    shown = [line for line in dry.stdout.splitlines() if line.startswith("trial ")][:2]
    ran = [f"trial {n}: params {json.dumps(json.loads(t['params']))}"
           for n, t in sorted(_trials(tmp_path / "run").items())]
    assert shown == ran


def test_a_multi_objective_sweep_ends_cleanly_and_status_shows_every_value(tmp_path, capsys):
    path = tmp_path / "mo.yaml"
    path.write_text(yaml.safe_dump(_quick(
        tmp_path, trainable="tests.trainables:two_metrics",
        objective=[{"metric": "loss"}, {"metric": "cost"}],
        search={"sampler": "nsga2", "seed": 0, "n_trials": 3})))
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "several objectives: no single best" in out and "values" in out
    assert not (tmp_path / "run" / "best.json").exists()


@pytest.mark.timeout(60)
def test_a_journal_writer_killed_9_mid_append_leaves_no_stale_lock_and_no_torn_line(tmp_path):
    """Before: Optuna's symlink lock outlived its process and the next driver waited on it."""
    from runner import study as study_lib

    config = parse_config(_quick(tmp_path), "trust.yaml")
    study = study_lib.open_study(config)
    study.enqueue_trial({"x": 1})
    journal = tmp_path / "run" / "study.journal"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, threading; from runner.study import _JournalFlock; "
         "_JournalFlock(sys.argv[1]).acquire(); open(sys.argv[1], 'ab').write(b'{\"op_co'); "
         "print('held', flush=True); threading.Event().wait()", str(journal)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"  # killed holding the lock, its line half-written
    holder.kill()
    holder.wait()
    assert not journal.read_bytes().endswith(b"\n")
    again = study_lib.open_study(config)
    again.enqueue_trial({"x": 2})  # an append: it neither waits nor lands on the torn line
    assert [t.params for t in study_lib.open_study(config).get_trials()] == [{}, {}] and \
        [t.system_attrs["fixed_params"] for t in study_lib.open_study(config).get_trials()] == \
        [{"x": 1}, {"x": 2}]


def test_a_sweep_begun_before_a_config_key_existed_resumes(tmp_path, capsys):
    """Before: the study's saved config lacked ``fidelity`` (added later), and every run or
    resume of such a sweep was refused as "the config changed fidelity"."""
    from runner.study import CONFIG_KEY, open_study, set_study_system_attr, study_system_attrs

    data = _quick(tmp_path, search={"sampler": "random", "seed": 0, "n_trials": 2})
    _sweep(data)
    study = open_study(parse_config(data))
    older = {k: v for k, v in study_system_attrs(study)[CONFIG_KEY].items() if k != "fidelity"}
    set_study_system_attr(study, CONFIG_KEY, older)  # as the version before fidelity saved it
    extended = {**data, "search": {**data["search"], "n_trials": 3}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(extended))
    capsys.readouterr()
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    assert len(_trials(tmp_path / "run")) == 3
