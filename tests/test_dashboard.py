"""``sweep dashboard RUN_DIR``: optuna-dashboard on the run's study, read through its HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from runner.cli import main
from tests.test_loggers import _free_port, _wait_http

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(ray_local, tmp_path_factory):
    from runner import run

    storage = str(tmp_path_factory.mktemp("dash") / "run")
    run({"name": "dash", "trainable": "tests.trainables:quadratic",
         "objective": {"metric": "loss"},
         "budget": {"steps": 6, "report_every": 2, "checkpoint_every": 3},
         "search": {"sampler": "random", "seed": 0, "n_trials": 3},
         "hyperparams": {"learning_rate": {"kind": "constant",
                                           "value": {"loguniform": [1e-4, 1.0]}}},
         "max_concurrent": 2, "storage": storage})
    return storage


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_the_dashboard_serves_the_study_with_its_metric_names(run_dir):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "dashboard", run_dir,
                             "--port", str(port)], env=dict(os.environ, PYTHONPATH=REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/api/studies", proc, 60)
        studies = _get(f"{base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["dash"]
        detail = _get(f"{base}/api/studies/{studies[0]['study_id']}")
        assert detail["directions"] == ["minimize"] and detail["objective_names"] == ["loss"]
        assert sorted(t["number"] for t in detail["trials"]) == [0, 1, 2]
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out


def test_without_the_extra_it_is_a_one_line_hint(run_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if not installed
    assert main(["dashboard", run_dir]) == 2
    err = capsys.readouterr().err
    assert err == "sweep: sweep dashboard needs optuna-dashboard: " \
                  "pip install 'sweep-runner[dashboard]'\n"


def test_a_port_in_use_is_one_line(run_dir, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", run_dir, "--port", str(port)]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the web server's own banner
    assert last == f"sweep: --port {port}: cannot listen on 127.0.0.1 (Address already in use); " \
                   f"choose another port"
