"""The cluster storage path: a PostgreSQL study shared by several drivers, an s3:// run dir.

Real servers on loopback: PostgreSQL from tests/pgserver.py, an S3-compatible server (moto).
"""

from __future__ import annotations

import threading

import pytest

from runner.cli import main
from runner.config import parse_config
from runner.driver import Sweep
from runner.records import RunRecords

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.postgres]


def _config(storage, study_storage, name, n_trials, **overrides):
    data = {
        "name": name,
        "trainable": "tests.trainables:quadratic",
        "objective": {"metric": "loss"},
        "budget": {"steps": 20, "report_every": 5, "checkpoint_every": 10},
        "search": {"sampler": "tpe", "seed": 0, "n_trials": n_trials},
        "hyperparams": {"learning_rate": {"kind": "constant",
                                          "value": {"loguniform": [1e-5, 1.0]}}},
        "max_concurrent": 2,
        "storage": storage,
        "study_storage": study_storage,
    }
    data.update(overrides)
    return parse_config(data, "shared.yaml")


@pytest.fixture
def database(postgres_server, monkeypatch, request):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("SWEEP_DB_PASSWORD", postgres_server.password)
    url = postgres_server.create_database(request.node.name.split("[")[0][5:40].lower())
    assert postgres_server.password not in url
    return url.replace("postgresql+psycopg2://", "postgresql://")  # the form users write


def test_two_drivers_on_one_postgres_study_finish_exactly_n_trials(database, tmp_path):
    n_trials = 12
    configs = [_config(str(tmp_path / host), database, "shared", n_trials) for host in ("a", "b")]
    errors = []

    def drive(config):
        try:
            Sweep(config).run()
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(c,)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    import optuna

    from runner.study import storage_url

    study = optuna.load_study(study_name="shared", storage=storage_url(database))
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(n_trials))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    recorded = [r["number"] for c in configs for r in RunRecords(c.run_dir()).read("trials").to_pylist()]
    assert sorted(recorded) == numbers  # each trial ran once, under one of the two drivers
    drivers = {t.system_attrs["driver"] for t in study.trials}
    assert not any(k.startswith("heartbeat") for k in study.user_attrs)  # out of sight
    assert len(drivers) == 2


@pytest.fixture
def bucket(monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    from tests.conftest import S3_TEST_ENV

    for name, value in S3_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    client.create_bucket(Bucket="sweeps")
    yield f"s3://sweeps/runs/s3run?endpoint_override={host}:{port}&scheme=http", client
    server.stop()


def test_a_sweep_on_an_s3_run_dir_with_a_postgres_study(bucket, database, capsys):
    uri, client = bucket
    config = _config(uri, database, "s3run", 3)
    summary = Sweep(config).run()
    errors = [t["error"] for t in RunRecords(uri).read("trials").to_pylist()]
    assert summary.counts == {"COMPLETE": 3}, errors
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="sweeps")["Contents"]}
    assert {f"runs/s3run/trials/trial-0000{i}.parquet" for i in range(3)} <= keys
    assert any(k.startswith("runs/s3run/checkpoints/trial-00000/ckpt-") for k in keys)
    trials = RunRecords(uri).read("trials").to_pylist()
    assert sorted(t["number"] for t in trials) == [0, 1, 2]
    client.put_object(Bucket="sweeps", Key="runs/s3run/config.yaml", Body=b"objective: {metric: loss}\n")
    assert main(["status", uri]) == 0
    assert "3 finished trials" in capsys.readouterr().out
