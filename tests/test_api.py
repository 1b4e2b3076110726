"""The Python API: ``from runner import run`` on a dict config, in-process with Ray already up and
in a fresh process that starts (and stops) its own Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runner.config import ConfigError
from runner.records import RunRecords

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(storage: str) -> dict:
    return {
        "name": "api", "trainable": "tests.trainables:quadratic",
        "objective": {"metric": "loss"},
        "budget": {"steps": 10, "report_every": 2, "checkpoint_every": 5},
        "search": {"sampler": "random", "seed": 3, "n_trials": 8},
        "hyperparams": {"learning_rate": {"kind": "constant",
                                          "value": {"loguniform": [1e-4, 1.0]}}},
        "max_concurrent": 2, "storage": storage,
    }


def test_run_a_dict_in_process_with_ray_up(ray_local, tmp_path):
    from runner import Result, run

    result = run(_config(str(tmp_path / "run")), n_trials=3)
    assert ray_local.is_initialized()  # the session's Ray is left as it was
    records = RunRecords(str(tmp_path / "run"))
    assert sorted(result.trials.number) == [0, 1, 2]
    assert len(result.history) == records.read("history").num_rows == 3 * 5
    best = min(records.read("trials").to_pylist(), key=lambda t: t["value"])
    assert (result.best.number, result.best.value) == (best["number"], best["value"])
    assert result.best.schedules == json.loads(best["schedules"])
    assert result.best.checkpoint == best["checkpoint"]
    state = result.load_best()
    assert state["objects"]["tally"] == {"count": 0} and state["position"]["step"] == 10
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "n_trials: 3" in saved  # the config as run, overrides included
    again = Result(str(tmp_path / "run"))
    assert again.best == result.best and again.trials.equals(result.trials)


def test_run_a_dict_in_a_fresh_process_starts_and_stops_its_ray(tmp_path):
    script = (
        "import json, sys, ray\n"
        "from runner import run\n"
        "result = run(json.loads(sys.argv[1]), n_trials=2)\n"
        "print('RESULT', json.dumps([len(result.trials), result.best.number, "
        "ray.is_initialized()]))\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(_config(str(tmp_path / "r")))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    count, best, ray_up = json.loads(line.removeprefix("RESULT "))
    assert count == 2 and best in (0, 1) and ray_up is False


def test_overrides_are_validated_and_name_the_key(tmp_path):
    from runner import run

    with pytest.raises(ConfigError, match=r"^<dict>: search.n_trials: "):
        run(_config(str(tmp_path / "run")), overrides={"search.n_trials": 0})
    path = os.path.join(REPO, "sweeps", "quickstart.yaml")
    with pytest.raises(ConfigError, match=r"quickstart.yaml: budget.stepz: unknown key"):
        run(path, overrides={"budget.stepz": 3})
    assert not (tmp_path / "run").exists()
