"""PostgreSQL as the multi-host study store: a real server, the password only from the environment,
and several processes asking and telling on one study without lost or duplicated trials.

The ``postgres_server`` fixture comes from tests/pgserver.py, through conftest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
import sqlalchemy.exc

from runner.study import storage_url

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.postgres

# One "driver": open the study with the URL from the config and the password from the environment,
# wait until every driver is ready (so that they overlap), then run ask/tell and print its numbers.
DRIVER = """
import json, os, sys, time
import optuna
from runner.study import storage_url
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, barrier = sys.argv[1:4]
me, n = int(sys.argv[4]), int(sys.argv[5])
storage = optuna.storages.RDBStorage(storage_url(url), engine_kwargs={"pool_pre_ping": True})
study = optuna.load_study(study_name=name, storage=storage,
                          sampler=optuna.samplers.TPESampler(seed=me, constant_liar=True))
open(os.path.join(barrier, str(me)), "w").close()
while len(os.listdir(barrier)) < 2:
    time.sleep(0.01)
numbers = []
for _ in range(n):
    trial = study.ask()
    x = trial.suggest_float("x", -10, 10)
    study.tell(trial, (x - 2) ** 2)
    numbers.append(trial.number)
print(json.dumps(numbers))
"""


@pytest.fixture
def db_env(monkeypatch, postgres_server):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("SWEEP_DB_PASSWORD", postgres_server.password)
    return postgres_server


def test_url_has_no_password_and_the_environment_supplies_it(db_env, monkeypatch):
    assert db_env.password not in db_env.url and "@" in db_env.url
    storage = optuna.storages.RDBStorage(storage_url(db_env.url))
    study = optuna.create_study(study_name="smoke", storage=storage)
    study.optimize(lambda t: t.suggest_int("a", 0, 3), n_trials=2)
    assert len(optuna.load_study(study_name="smoke", storage=storage).trials) == 2
    monkeypatch.delenv("SWEEP_DB_PASSWORD")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password"):
        optuna.storages.RDBStorage(storage_url(db_env.url))


def test_two_processes_ask_and_tell_on_one_study(db_env, tmp_path):
    url = db_env.create_database("two_drivers")
    n = 10
    optuna.create_study(study_name="shared", storage=optuna.storages.RDBStorage(storage_url(url)))
    barrier = tmp_path / "ready"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, url, "shared", str(barrier), str(i),
                                 str(n)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(2)]
    outputs = [d.communicate(timeout=180) for d in drivers]
    for driver, (_, err) in zip(drivers, outputs):
        assert driver.returncode == 0, err
    numbers = [json.loads(out) for out, _ in outputs]
    assert sorted(numbers[0] + numbers[1]) == list(range(2 * n))

    trials = optuna.load_study(study_name="shared",
                               storage=optuna.storages.RDBStorage(storage_url(url))).trials
    assert len(trials) == 2 * n
    assert sorted(t.number for t in trials) == list(range(2 * n))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
