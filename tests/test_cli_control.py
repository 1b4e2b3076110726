"""``sweep pause|migrate|resume|status|show`` on real run dirs, stopped and live (no Ray: a live
driver is a driver.json naming this process and a hand-written live.json)."""

from __future__ import annotations

import json
import os
import socket
import time

import optuna
import pytest
import yaml

import runner.cli
from runner.cli import main
from runner.config import parse_config
from runner.records import RunRecords, history_rows
from runner.study import open_study
from tests.test_records import trial_row

CONFIG = {
    "name": "ctl",
    "trainable": "tests.trainables:quadratic",
    "objective": {"metric": "loss"},
    "budget": {"steps": 20, "report_every": 5, "checkpoint_every": 10},
    "search": {"sampler": "random", "seed": 0, "n_trials": 4},
    "hyperparams": {"learning_rate": {"kind": "constant", "value": {"loguniform": [1e-5, 1.0]}}},
}


@pytest.fixture
def run_dir(tmp_path):
    """A stopped sweep: trial 0 was running (history to step 10), 1 completed, 2 was asked."""
    path = tmp_path / "run"
    path.mkdir()
    (path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    study = open_study(parse_config({**CONFIG, "storage": str(path)}))
    for _ in range(3):
        trial = study.ask()
        trial.set_user_attr("params", {"width": 8 + trial.number})
        trial.set_user_attr("schedule_specs", {"learning_rate": {"kind": "constant",
                                                                  "value": 0.01}})
        trial.report(1.0, 5)
    study.tell(1, 0.5)
    records = RunRecords(str(path))
    records.write("trials", 1, [trial_row(1, "COMPLETE", [0.5])])
    metrics, applied = history_rows(0, [{"step": 10, "time": time.time(),
                                         "metrics": {"loss": 0.75},
                                         "hyperparams": {"learning_rate": 0.01}}])
    records.write("history", 0, metrics)
    records.write("applied", 0, applied)
    return path


def snapshot(root) -> dict:
    """Every file under ``root`` with its bytes: what a refused command must leave alone."""
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(root) for f in names}


def go_live(path, trials):
    (path / "driver.json").write_text(json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "id": "d1"}))
    (path / "live.json").write_text(json.dumps(
        {"driver": "d1", "pid": os.getpid(), "host": socket.gethostname(),
         "updated": time.time(), "trials": trials}))


LIVE_TRIALS = [{"number": 0, "state": "running", "step": 40, "node": "10.0.0.7", "restarts": 1},
               {"number": 2, "state": "queued", "step": 0, "node": "", "restarts": 0,
                "parent": 0, "parent_step": 16, "rung": 20}]


def refused(capsys, argv, root, expect):
    before = snapshot(root)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep: ") and expect in lines[0], lines
    assert snapshot(root) == before


@pytest.mark.parametrize("argv, expect", [
    (["pause", "{run}", "99"], "{run}: no trial 99"),
    (["pause", "{run}", "1"], "{run}: trial 1 is finished (COMPLETE); nothing to pause"),
    (["migrate", "{run}", "99", "--to", "10.0.0.8"], "{run}: no trial 99"),
    (["migrate", "{run}", "1"], "trial 1 is finished (COMPLETE); nothing to migrate"),
    (["resume", "{run}", "99"], "{run}: no trial 99"),
    (["resume", "{run}", "1"], "trial 1 is finished (COMPLETE); nothing to resume"),
    (["show", "{run}", "99"], "{run}: no trial 99"),
])
@pytest.mark.parametrize("live", [False, True], ids=["stopped", "live"])
def test_refused_commands_exit_2_with_one_line_and_write_nothing(run_dir, capsys, argv, expect,
                                                                 live):
    if live:
        go_live(run_dir, LIVE_TRIALS)
    run = str(run_dir)
    refused(capsys, [a.format(run=run) for a in argv], run_dir, expect.format(run=run))


def test_a_trial_the_study_has_finished_before_its_row_was_written_is_refused(run_dir, capsys):
    study = optuna.load_study(study_name="ctl", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal"))))
    study.tell(2, state=optuna.trial.TrialState.PRUNED)
    refused(capsys, ["pause", str(run_dir), "2"], run_dir, "trial 2 is finished (PRUNED)")


@pytest.mark.parametrize("command", [["status"], ["show", "0"], ["pause", "0"], ["resume"],
                                     ["migrate", "0"], ["export"], ["plot"]])
def test_a_dir_without_config_yaml_is_not_a_run_dir(tmp_path, capsys, command):
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "notes.txt").write_text("hello")
    argv = [command[0], str(tmp_path / "notarun"), *command[1:]]
    refused(capsys, argv, tmp_path, f"{tmp_path / 'notarun'}: not a run dir (no config.yaml)")
    argv[1] = str(tmp_path / "missing")
    refused(capsys, argv, tmp_path, f"{tmp_path / 'missing'}: not a run dir (no such directory)")


def test_pause_and_migrate_of_a_stopped_sweep(run_dir, capsys):
    assert main(["pause", str(run_dir), "2"]) == 0
    assert json.loads((run_dir / "paused.json").read_text()) == [2]
    assert main(["migrate", str(run_dir), "0", "--to", "10.0.0.8"]) == 0
    (request,) = os.listdir(run_dir / "control")
    assert json.loads((run_dir / "control" / request).read_text()) == \
        {"action": "migrate", "trial": 0, "to": "10.0.0.8"}
    assert "migration requested for when the sweep resumes" in capsys.readouterr().out


def test_requests_to_a_live_sweep(run_dir, capsys):
    go_live(run_dir, LIVE_TRIALS)
    before = snapshot(run_dir)
    assert main(["pause", str(run_dir), "0"]) == 0
    assert main(["resume", str(run_dir), "0"]) == 0
    names = sorted(os.listdir(run_dir / "control"))
    assert [json.loads((run_dir / "control" / n).read_text())["action"] for n in names] == \
        ["pause", "resume"]
    assert {k: v for k, v in snapshot(run_dir).items() if not k.startswith("control/")} == before
    assert "trial 0: resume requested from the running sweep" in capsys.readouterr().out
    refused(capsys, ["resume", str(run_dir)], run_dir, "the sweep is running; name the paused TRIAL")


def test_resume_leaves_paused_json_to_the_driver(run_dir, capsys, monkeypatch):
    (run_dir / "paused.json").write_text("[0, 2]")
    calls = []

    def execute(config, address, console, unpause, **_):
        calls.append((config.run_dir(), address, unpause, (run_dir / "paused.json").read_text()))
        return 0

    monkeypatch.setattr(runner.cli, "_execute", execute)
    assert main(["resume", str(run_dir), "0"]) == 0
    assert main(["resume", str(run_dir), "--address", "auto"]) == 0
    assert calls == [(str(run_dir), None, {0}, "[0, 2]"), (str(run_dir), "auto", None, "[0, 2]")]


def test_status_of_a_live_sweep_lists_its_unfinished_trials(run_dir, capsys):
    go_live(run_dir, LIVE_TRIALS)
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "1 finished trials" in out and "running: 2 unfinished trials, driver d1" in out
    rows = [line.split() for line in out.splitlines() if "10.0.0.7" in line or "queued" in line]
    assert [r for r in rows if "running" in r][0][1:5] == ["0", "│", "running", "│"]
    assert any("40" in r and "10.0.0.7" in r for r in rows)
    assert any("queued" in r for r in rows)
    assert "branch of 0 at rung 20" in out  # a cooldown branch says whose it is
    assert "continue with" not in out


def test_a_live_trial_is_shown_as_the_branch_or_fork_it_is():
    from runner.driver import _lineage_fields
    from runner.report import lineage_note

    def note(lineage):
        return lineage_note(_lineage_fields(lineage))

    assert note(None) == ""
    assert note({"trial": 1, "step": 72, "rung": 90}) == "branch of 1 at rung 90"
    assert note({"trial": 1, "step": 72}) == "fork of 1 at 72"


def test_status_of_a_stopped_sweep_with_paused_trials(run_dir, capsys):
    (run_dir / "paused.json").write_text("[0, 2]")
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "paused trials: 0, 2" in out
    assert f"continue with: sweep resume {run_dir}" in out
    assert "running:" not in out


def test_status_of_a_live_sweep_run_from_python_needs_no_config(tmp_path, capsys):
    go_live(tmp_path, LIVE_TRIALS)  # a Sweep started from Python saves no config.yaml
    assert main(["status", str(tmp_path)]) == 0
    assert "running: 2 unfinished trials" in capsys.readouterr().out
    assert main(["pause", str(tmp_path), "0"]) == 0
    assert "pause requested" in capsys.readouterr().out
    refused(capsys, ["pause", str(tmp_path), "5"], tmp_path, "no trial 5")


def test_show_a_running_trial_with_its_history_so_far(run_dir, capsys):
    go_live(run_dir, LIVE_TRIALS)
    assert main(["show", str(run_dir), "0"]) == 0
    out = capsys.readouterr().out
    assert "trial 0: running step=40 node=10.0.0.7 restarts=1" in out
    (row,) = [line.split() for line in out.splitlines() if "0.75" in line]
    assert [cell for cell in row if cell != "│"] == ["10", "0.75", "0.01"]  # step, loss, lr


def test_show_a_trial_the_study_has_but_no_table_does(run_dir, capsys):
    assert main(["show", str(run_dir), "2"]) == 0
    out = capsys.readouterr().out
    assert "trial 2: stopped step=5" in out
    assert 'params: {"width": 10}' in out
    assert 'learning_rate: {"kind": "constant", "value": 0.01}' in out
    (run_dir / "paused.json").write_text("[2]")
    assert main(["show", str(run_dir), "2"]) == 0
    assert "trial 2: paused" in capsys.readouterr().out


def test_show_a_finished_trial(run_dir, capsys):
    assert main(["show", str(run_dir), "1"]) == 0
    out = capsys.readouterr().out
    assert "trial 1: COMPLETE value=0.5 node=10.0.0.7 restarts=1" in out
    assert 'params: {"width": 32}' in out



def test_reading_a_trial_row_lets_the_process_exit_cleanly(run_dir):
    """pyarrow's decode threads, alive as the interpreter exits, aborted ``sweep pause RUN N`` of
    a finished trial (exit 134, after the right line) about one run in three: only a process
    that reads a row and exits at once shows it, and only one at a time (load hides it)."""
    import subprocess
    import sys

    code = (f"from runner.records import RunRecords\n"
            f"assert RunRecords({str(run_dir)!r}).read_trial('trials', 1).num_rows == 1\n"
            f"raise SystemExit(2)")
    codes = [subprocess.run([sys.executable, "-c", code], capture_output=True).returncode
             for _ in range(20)]
    assert codes == [2] * 20
