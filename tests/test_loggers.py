"""Loggers fed by the driver's events: TensorBoard read back with TensorBoard's own reader, MLflow
through its client from a real tracking server on 127.0.0.1, a user logger by import path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

import numpy as np
import pytest
import yaml

from runner.cli import main
from runner.loggers import LogFanout, Logger
from runner.records import RunRecords

TRIALS = 3
STEPS = 20


class Recorder(Logger):
    """A user logger (``kind: tests.test_loggers:Recorder``): appends every hook call as JSON."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, *call) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(call) + "\n")

    def trial_started(self, number, *, step, resumed, params, schedules):
        self._write("started", number, step, resumed, params is not None)

    def report(self, number, step, metrics, hyperparams, time):
        self._write("report", number, step, metrics, hyperparams)

    def restarted(self, number, why, from_step):
        self._write("restarted", number, why, from_step)

    def trial_finished(self, number, state, values, error):
        self._write("finished", number, state, values)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)  # polling a server that is starting; not a synchronisation
    raise TimeoutError(f"{url} did not answer within {deadline_s} s")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend) on 127.0.0.1, one worker, no job runner."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(
            [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
             "--default-artifact-root", str(root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/health", proc, 120)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def logged_run(ray_local, mlflow_server, tmp_path_factory):
    """One sweep with all three loggers, each trial failing once mid-run and retried."""
    from runner import run

    tmp = tmp_path_factory.mktemp("logged")
    (tmp / "markers").mkdir()
    config = {
        "name": "logged", "trainable": "tests.trainables:fails_once_midway",
        "objective": {"metric": "loss"},
        "budget": {"steps": STEPS, "report_every": 2, "checkpoint_every": 10},
        "search": {"sampler": "random", "seed": 1, "n_trials": TRIALS},
        "hyperparams": {"learning_rate": {"kind": "linear", "init_value": 0.1,
                                          "end_value": {"loguniform": [1e-3, 1e-2]},
                                          "transition_steps": STEPS}},
        "params": {"marker_dir": str(tmp / "markers")},
        "retries": 1, "max_concurrent": 2, "storage": str(tmp / "run"),
        "loggers": ["tensorboard",
                    {"kind": "mlflow", "options": {"tracking_uri": mlflow_server}},
                    {"kind": "tests.test_loggers:Recorder",
                     "options": {"path": str(tmp / "calls.jsonl")}}],
    }
    result = run(config)
    return result, tmp


def _history(result) -> dict[tuple[int, str], list[tuple[int, float]]]:
    series = defaultdict(list)
    for row in result.history.itertuples():
        series[(row.trial, row.metric)].append((row.step, row.value))
    for row in result.applied.itertuples():
        series[(row.trial, f"hyperparams/{row.hyperparameter}")].append((row.step, row.value))
    return {k: sorted(v) for k, v in series.items()}


def test_tensorboard_scalars_equal_the_history_table(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, _ = logged_run
    assert list(result.trials.state) == ["COMPLETE"] * TRIALS
    assert list(result.trials.retries) == [1] * TRIALS
    series = _history(result)
    assert {name for _, name in series} == {"loss", "val_loss", "hyperparams/learning_rate"}
    for (number, name), expected in series.items():
        events = EventAccumulator(os.path.join(result.run_dir, "tensorboard",
                                               f"trial-{number:05d}"))
        events.Reload()
        got = [(e.step, e.value) for e in events.Scalars(name)]
        # TensorBoard keeps float32; the redone reports after the retry replaced the first ones
        assert got == [(s, float(np.float32(v))) for s, v in expected], (number, name)
        restarts = events.Scalars("sweep/restarts")
        assert [(e.step, e.value) for e in restarts] == [(10, 1.0)]
        summary = events.Tensors("sweep/result/text_summary")[0].tensor_proto.string_val[0]
        assert summary.decode().startswith("COMPLETE loss=")


def test_mlflow_runs_hold_params_metrics_restarts_and_state(logged_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    result, _ = logged_run
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("logged")
    runs = {int(r.data.tags["sweep.trial"]): r
            for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == list(range(TRIALS))
    series = _history(result)
    for trial in result.trials.itertuples():
        run = runs[trial.number]
        assert run.info.status == "FINISHED" and run.data.tags["sweep.state"] == "COMPLETE"
        assert run.data.tags["sweep.restarts"] == "1"
        assert run.data.tags["sweep.last_restart"] == "retry, from step 10"
        spec = json.loads(trial.schedules)["learning_rate"]
        assert float(run.data.params["schedule.learning_rate.end_value"]) == spec["end_value"]
        assert run.data.params["marker_dir"] == json.loads(trial.params)["marker_dir"]
        assert run.data.metrics["value/loss"] == trial.value
        for name in ("loss", "val_loss", "hyperparams/learning_rate"):
            got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
            assert got == series[(trial.number, name)], (trial.number, name)


def test_a_user_logger_by_import_path_hears_every_report_once_in_order(logged_run):
    result, tmp = logged_run
    calls = [json.loads(line) for line in (tmp / "calls.jsonl").read_text().splitlines()]
    for number in range(TRIALS):
        mine = [c for c in calls if c[1] == number]
        kinds = [c[0] for c in mine]
        assert kinds[0] == "started" and mine[0][2:] == [0, False, True]
        assert ["restarted", number, "retry", 10] in mine
        resumed = mine[kinds.index("restarted") + 1]
        assert resumed == ["started", number, 10, True, True]
        assert kinds[-1] == "finished" and mine[-1][2] == "COMPLETE"
        # the last report of each step is what the history table holds
        last = {c[2]: c[3] for c in mine if c[0] == "report"}
        table = RunRecords(result.run_dir).read_trial("history", number).to_pylist()
        assert {(r["step"], r["metric"]): r["value"] for r in table} == \
            {(s, k): v for s, m in last.items() for k, v in m.items()}


class Flushing(Recorder):
    def flush(self):
        self._write("flush")

    def close(self):
        self._write("close")


def test_loggers_are_flushed_and_closed_at_the_end(tmp_path):
    """A stranger's find: flush() and close() were never called (the base class's were)."""
    with LogFanout([Flushing(str(tmp_path / "calls.jsonl"))], str(tmp_path), None) as fanout:
        fanout("started", {"number": 0, "step": 0, "resumed": False})
    calls = [json.loads(line)[0] for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls == ["started", "flush", "close"]


def test_mlflow_metrics_are_sent_by_a_flush_while_the_trial_runs(tmp_path):
    """Live, and what a stop or a killed driver leaves to the last flush reaches MLflow."""
    from mlflow.tracking import MlflowClient

    from runner.loggers import MLflowLogger

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = MLflowLogger(tracking_uri=uri, experiment="live")
    logger.open(str(tmp_path), None)
    logger.trial_started(0, step=0, resumed=False, params={"width": 8},
                         schedules={"learning_rate": {"kind": "constant", "value": 0.1}})
    logger.report(0, 2, {"loss": 1.5}, {"learning_rate": 0.1}, time.time())
    logger.flush()
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("live").experiment_id])[0]
    assert run.info.status == "RUNNING" and run.data.params == {
        "width": "8", "schedule.learning_rate.kind": "constant",
        "schedule.learning_rate.value": "0.1"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [
        (2, 1.5)]


def test_mlflow_holds_what_a_failing_server_did_not_take_and_sends_it_later(tmp_path, caplog):
    """A stranger's find: a tracking server restarting for 8 s switched MLflow off for the rest
    of the sweep (the run in flight left RUNNING, later trials without runs)."""
    from mlflow.tracking import MlflowClient

    from runner.loggers import MLflowLogger

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = MLflowLogger(tracking_uri=uri, experiment="outage")
    logger.open(str(tmp_path), None)
    logger.trial_started(0, step=0, resumed=False, params={"width": 8}, schedules={})
    logger.report(0, 2, {"loss": 2.0}, {}, time.time())
    logger.flush()
    real = logger.client.log_batch

    def down(*args, **kwargs):
        raise ConnectionError("Connection refused")

    logger.client.log_batch = down  # the server goes away
    logger.report(0, 4, {"loss": 1.0}, {}, time.time())
    logger.restarted(0, "lost", 4)
    logger.trial_finished(0, "COMPLETE", {"loss": 1.0}, "")
    logger.trial_started(1, step=0, resumed=False, params={"width": 16}, schedules={})
    logger.report(1, 2, {"loss": 3.0}, {}, time.time())
    logger.flush()
    logger.flush()
    logger.client.log_batch = real  # and comes back
    logger.flush()
    logger.trial_finished(1, "PRUNED", {"loss": 3.0}, "")
    logger.flush()
    logger.close()
    assert [r.getMessage() for r in caplog.records if r.name == "runner.loggers"] == [
        "MLflow: sending failed (Connection refused); the data is held and sent again each "
        "second", "MLflow: sending works again; the held data is sent"]
    client = MlflowClient(uri)
    runs = {int(r.data.tags["sweep.trial"]): r for r in client.search_runs(
        [client.get_experiment_by_name("outage").experiment_id])}
    assert {n: r.info.status for n, r in runs.items()} == {0: "FINISHED", 1: "KILLED"}
    assert runs[0].data.tags["sweep.last_restart"] == "lost, from step 4"
    assert runs[1].data.params == {"width": "16"}
    history = {n: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "loss")]
               for n, r in runs.items()}
    assert history == {0: [(2, 2.0), (4, 1.0)], 1: [(2, 3.0)]}


def test_sweeps_sharing_a_tensorboard_dir_each_have_a_folder(tmp_path):
    """A stranger's find: two sweeps with the same dir option wrote the same trial folders."""
    from runner.loggers import TensorBoardLogger

    import zlib

    for run_dir in (tmp_path / "a" / "run", tmp_path / "b" / "run"):  # alike at the end
        logger = TensorBoardLogger(dir=str(tmp_path / "tb"))
        logger.open(str(run_dir), None)
        logger.trial_started(0, step=0, resumed=False, params={}, schedules={})
        logger.report(0, 1, {"loss": 1.0}, {}, time.time())
        logger.close()
    folders = sorted(f"run-{zlib.crc32(str(tmp_path / d / 'run').encode()):08x}" for d in "ab")
    assert sorted(os.listdir(tmp_path / "tb")) == folders
    assert _tensorboard_steps(tmp_path / "tb" / folders[0] / "trial-00000") == [1]


def _tensorboard_steps(logdir) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return [e.step for e in events.Scalars("loss")]


@pytest.mark.parametrize("resumed_at", [20, 0])
def test_a_new_drivers_tensorboard_file_purges_what_it_redoes(tmp_path, resumed_at):
    """A stranger's find: after a driver's kill -9, the new driver's reports recovered from a
    checkpoint of step 20 (already logged live by the old driver's logger) showed twice; so
    did a trial redone from step 0."""
    from runner.loggers import TensorBoardLogger

    first = TensorBoardLogger(dir=str(tmp_path))  # the killed driver's logger
    first.trial_started(0, step=0, resumed=False, params={}, schedules={})
    for step in (10, 20, 30):
        first.report(0, step, {"loss": 1.0 / step}, {}, time.time())
    first.close()
    second = TensorBoardLogger(dir=str(tmp_path))  # a new driver: `sweep resume`
    second.trial_started(0, step=resumed_at, resumed=bool(resumed_at), params={}, schedules={})
    for step in (10, 20, 30, 40):  # recovered (10, 20), or redone, then new
        second.report(0, step, {"loss": 1.0 / step}, {}, time.time())
    second.trial_finished(0, "COMPLETE", {"loss": 0.025}, "")
    assert _tensorboard_steps(tmp_path / "trial-00000") == [10, 20, 30, 40]


class Broken(Logger):
    def report(self, number, step, metrics, hyperparams, time):
        raise RuntimeError("tracking server gone")


def test_a_failing_logger_is_switched_off_and_the_others_go_on(tmp_path, caplog):
    recorder = Recorder(str(tmp_path / "calls.jsonl"))
    with LogFanout([Broken(), recorder], str(tmp_path), None) as fanout:
        fanout("queued", {"number": 0, "params": {}, "specs": {}})
        fanout("started", {"number": 0, "step": 0, "resumed": False})
        for step in (1, 2):
            fanout("report", {"number": 0, "step": step, "metrics": {"loss": 1.0},
                              "hyperparams": {}})
        fanout("finished", {"number": 0, "state": "COMPLETE", "values": {"loss": 1.0},
                            "error": ""})
    calls = [json.loads(line)[0] for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls == ["started", "report", "report", "finished"]
    assert [r.getMessage() for r in caplog.records if "Broken" in r.getMessage()] == [
        "logger Broken failed and is off for the rest of the sweep: tracking server gone"]


class Refusing(Logger):
    def __init__(self) -> None:
        raise RuntimeError("SLACK_TOKEN is not set")


@pytest.mark.parametrize("loggers, message", [
    (["tests.test_loggers:Refusing"], "loggers.0: tests.test_loggers:Refusing: SLACK_TOKEN is not set"),
    (["__main__:Mine"], "loggers.0.kind: loggers run in a process of their own, which cannot "
                        "import your script's __main__: put the class in a module and name that"),
    ([{"kind": "tb"}], "loggers.0.kind: expected tensorboard, mlflow or 'package.module:Class'"),
    ([{"kind": "tensorboard", "options": {"logdir": "x"}}],
     "loggers.0.options.logdir: unknown option of the tensorboard logger (known: dir)"),
    (["tests.nowhere:Logger"], "loggers.0: tests.nowhere:Logger needs tests.nowhere, which is "
                               "not installed"),
    (["tensorboard", "tests.nowhere:Logger"], "loggers.1: tests.nowhere:Logger needs "
                                              "tests.nowhere, which is not installed"),
    (["tensorboard", "tensorboard"], "loggers: loggers.1 is the same as loggers.0; keep one"),
    ([{"kind": "mlflow", "options": {"experiment": 5}}],
     "loggers.0: mlflow: experiment: expected a string, got 5"),
    (["tests.test_loggers:Nope"], "loggers.0: tests.test_loggers:Nope: module "),
    (["tests.trainables:Tally"], "loggers.0: tests.trainables:Tally: expected a subclass of "
                                 "runner.loggers.Logger"),
    ([{"kind": "tests.test_loggers:Recorder", "options": {"file": "x"}}],
     "loggers.0: tests.test_loggers:Recorder: "),
])
def test_a_bad_logger_is_one_line_naming_the_file_and_key(tmp_path, capsys, loggers, message):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bad", "trainable": "tests.trainables:quadratic", "objective": {"metric": "loss"},
        "budget": {"steps": 4, "report_every": 1, "checkpoint_every": 2},
        "search": {"n_trials": 1}, "storage": str(tmp_path / "run"),
        "hyperparams": {"learning_rate": {"kind": "constant", "value": 0.1}},
        "loggers": loggers}))
    for dry_run in ([], ["--dry-run"]):  # a dry run builds the loggers too (a stranger's find)
        assert main(["run", str(path), *dry_run]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sweep: {path}: {message}") and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()


class Opening(Logger):
    """Records which thread opens it: a slow open (an unreachable server) must not be the
    driver's."""

    def open(self, run_dir, config) -> None:
        import threading

        OPENED_WHILE.append(threading.current_thread().name)


OPENED_WHILE: list = []


def test_loggers_are_opened_off_the_drivers_thread(tmp_path):
    """A stranger's find: an unreachable MLflow server held the sweep for minutes at start."""
    with LogFanout([Opening()], str(tmp_path), None):
        pass
    assert OPENED_WHILE == ["sweep-loggers"]


def test_reports_a_resumed_driver_recovers_from_a_checkpoint_reach_tensorboard(ray_local,
                                                                              tmp_path):
    """kill -9 of the driver as trial 0's checkpoint of step 10 lands, before it records the
    reports up to it: they come back with the checkpoint, told before the trial starts again.
    Before: TensorBoard had no writer for the trial then, and steps 2 to 10 were missing."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, path = tmp_path / "run", tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "recovered", "trainable": "tests.trainables:quadratic",
        "objective": {"metric": "loss"},
        "budget": {"steps": STEPS, "report_every": 2, "checkpoint_every": 10},
        "search": {"sampler": "random", "seed": 0, "n_trials": 1},
        "hyperparams": {"learning_rate": {"kind": "constant", "value": 0.01}},
        "storage": str(run_dir), "loggers": ["tensorboard"]}))
    killed = subprocess.run([sys.executable, "-m", "tests.killed_driver", "checkpoint:0:10",
                             "run", str(path)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    resumed = subprocess.run([sys.executable, "-m", "runner.cli", "resume", str(run_dir)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    history = sorted((r["step"], float(np.float32(r["value"])))
                     for r in RunRecords(str(run_dir)).read("history").to_pylist())
    assert [s for s, _ in history] == list(range(2, STEPS + 1, 2))
    events = EventAccumulator(str(run_dir / "tensorboard" / "trial-00000"))
    events.Reload()
    assert sorted({(e.step, e.value) for e in events.Scalars("loss")}) == history


class Crashing(Logger):
    """A user logger that takes its interpreter down at trial 1's first report (as a native
    extension's crash would)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def open(self, run_dir, config) -> None:
        with open(self.path, "w") as f:
            json.dump({"pid": os.getpid(), "parent": os.getppid()}, f)

    def report(self, number, step, metrics, hyperparams, time):
        if number == 1:
            os._exit(3)


def test_loggers_run_in_their_own_process_and_its_crash_leaves_the_sweep_whole(ray_local,
                                                                                 tmp_path, caplog):
    """A logger's CPU is not the driver's (MLflow's SQL held the driver's GIL for longer than a
    trivial trial), and a logger that kills its process costs the logging, not the sweep."""
    from runner import run

    where = tmp_path / "where.json"
    result = run({
        "name": "crashing", "trainable": "tests.trainables:quadratic",
        "objective": {"metric": "loss"},
        "budget": {"steps": 6, "report_every": 2, "checkpoint_every": 6},
        "search": {"sampler": "random", "seed": 0, "n_trials": 3}, "max_concurrent": 1,
        "hyperparams": {"learning_rate": {"kind": "constant", "value": 0.01}},
        "storage": str(tmp_path / "run"),
        "loggers": ["tensorboard",
                    {"kind": "tests.test_loggers:Crashing", "options": {"path": str(where)}}]})
    opened = json.loads(where.read_text())
    assert opened["pid"] != os.getpid() and opened["parent"] == os.getpid()
    assert list(result.trials.state) == ["COMPLETE"] * 3
    assert [r.getMessage() for r in caplog.records if r.name == "runner.loggers"] == [
        "loggers.1 (tests.test_loggers:Crashing): its process ended (exit code 3); nothing more "
        "is logged by it in this sweep"]
    # each logger has a process of its own: TensorBoard logged every trial whole
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for number in range(3):
        events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / f"trial-{number:05d}"))
        events.Reload()
        assert [e.step for e in events.Scalars("loss")] == [2, 4, 6]


class PidRecorder(Recorder):
    """A Recorder that also says which process it runs in (``pid_path``)."""

    def __init__(self, path: str, pid_path: str) -> None:
        super().__init__(path)
        with open(pid_path, "w") as f:
            f.write(str(os.getpid()))


def _gone(pid: int, deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)  # polling another process's end, with a deadline
    return False


def test_a_killed_drivers_loggers_send_what_they_had_and_exit(ray_local, tmp_path):
    """kill -9 of the driver at trial 1's checkpoint of step 10: trial 0's calls, all sent
    before, are written, and the loggers' process ends by itself (nothing left running)."""
    run_dir, path = tmp_path / "run", tmp_path / "sweep.yaml"
    calls, pid_path = tmp_path / "calls.jsonl", tmp_path / "loggers.pid"
    path.write_text(yaml.safe_dump({
        "name": "killed", "trainable": "tests.trainables:quadratic",
        "objective": {"metric": "loss"},
        "budget": {"steps": STEPS, "report_every": 2, "checkpoint_every": 10},
        "search": {"sampler": "random", "seed": 0, "n_trials": 2}, "max_concurrent": 1,
        "hyperparams": {"learning_rate": {"kind": "constant", "value": 0.01}},
        "storage": str(run_dir),
        "loggers": [{"kind": "tests.test_loggers:PidRecorder",
                     "options": {"path": str(calls), "pid_path": str(pid_path)}}]}))
    killed = subprocess.run([sys.executable, "-m", "tests.killed_driver", "checkpoint:1:10",
                             "run", str(path)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert _gone(int(pid_path.read_text()), 60)
    mine = [c for c in map(json.loads, calls.read_text().splitlines()) if c[1] == 0]
    assert [c[0] for c in mine] == ["started"] + ["report"] * (STEPS // 2) + ["finished"]


def test_a_script_that_runs_a_sweep_when_its_logger_is_imported_is_one_error(ray_local,
                                                                              tmp_path):
    """A stranger's find: a logger in a script without a __main__ guard started a sweep in each
    logger's process, which started another: processes without end, and no word."""
    done = subprocess.run([sys.executable, "-m", "tests.unguarded_script", str(tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "runner.config.ConfigError: <dict>: loggers.0: tests.unguarded_script:Mine: a sweep was "
        "started while a logger's process imported its module: call run() under "
        "`if __name__ == \"__main__\":`")
    assert not (tmp_path / "run").exists()
