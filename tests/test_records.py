"""The run-dir layer: atomic writes, read errors that are errors, URIs, the tables, exports.

Real files throughout (a temporary dir, and a loopback S3 server where moto is installed).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from runner.cli import main
from runner.control import ControlChannel
from runner.records import TRIALS_SCHEMA, RunRecords, child_uri, history_rows
from runner.report import export
from runner.rundir import RunDir, RunDirError

S3_URI = "s3://sweeps/runs/x?endpoint_override=127.0.0.1:9000&scheme=http"
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


def files_under(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names)


def trial_row(number, state, values, **extra):
    row = {"number": number, "state": state, "value": values[0] if values else None,
           "values": values, "params": json.dumps({"width": 32}),
           "schedules": json.dumps({"learning_rate": {"kind": "constant", "value": 0.01}}),
           "node": "10.0.0.7", "started": WHEN, "ended": WHEN, "restarts": 1,
           "restart_log": "[]", "last_step": 20, "error": None}
    return {**row, **extra}


def write_run(run_dir) -> RunRecords:
    """A finished run of three trials, written through RunRecords as the driver does."""
    records = RunRecords(str(run_dir))
    records.write("trials", 0, [trial_row(0, "COMPLETE", [0.25, 1.5e-7], checkpoint="c/ckpt")])
    records.write("trials", 1, [trial_row(1, "PRUNED", None, error="pruned at step 10")])
    records.write("trials", 2, [trial_row(2, "FAIL", None, error='bad, "quoted"\nline')])
    for number in range(3):
        reports = [{"step": s, "time": WHEN.timestamp(), "metrics": {"loss": 1.0 / s},
                    "hyperparams": {"learning_rate": 0.01 * s}} for s in (10, 20)]
        metrics, applied = history_rows(number, reports)
        records.write("history", number, metrics)
        records.write("applied", number, applied)
    return records


# --- atomic writes -----------------------------------------------------------------------------

def test_writes_leave_no_temporary_files(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    run.write_json("paused.json", [3, 1])
    run.write_json("paused.json", [1])
    run.write_text("config.yaml", "name: x\n")
    run.write_bytes("deep/er/blob.bin", b"\0\1")
    run.write_files({"export/a.csv": b"a\n", "export/b.csv": b"b\n"})
    write_run(run.uri)
    ControlChannel(run).request("pause", 3)
    assert all(".tmp" not in name for name in files_under(run.uri))
    assert run.read_json("paused.json") == [1]
    assert run.read_text("config.yaml") == "name: x\n"
    assert run.read_bytes("deep/er/blob.bin") == b"\0\1"
    assert run.list("export", ".csv") == ["export/a.csv", "export/b.csv"]
    assert len(run.list("control", ".json")) == 1


def test_a_failed_write_changes_nothing_and_names_the_file(tmp_path):
    run = RunDir(str(tmp_path))
    run.write_text("export/a.csv", "old\n")
    (tmp_path / "blocked").write_text("a file where a directory should be")
    with pytest.raises(RunDirError, match=f"{tmp_path}/blocked/b.csv: cannot write"):
        run.write_files({"export/a.csv": b"new\n", "blocked/b.csv": b"new\n"})
    assert run.read_text("export/a.csv") == "old\n"  # the first file was not moved in either
    os.makedirs(tmp_path / "export" / "c.csv")  # now the move fails: a directory is in the way
    with pytest.raises(RunDirError, match="c.csv: cannot write"):
        run.write_bytes("export/c.csv", b"new\n")
    assert files_under(tmp_path) == ["blocked", "export/a.csv"]


def test_delete(tmp_path):
    run = RunDir(str(tmp_path))
    run.write_text("live.json", "{}")
    run.delete("live.json")
    run.delete("live.json")  # missing_ok
    assert not run.exists("live.json")
    with pytest.raises(FileNotFoundError):
        run.delete("live.json", missing_ok=False)


# --- reads: absent is empty, anything else is an error ------------------------------------------

def test_a_missing_table_or_file_reads_as_absent(tmp_path):
    records = RunRecords(str(tmp_path / "fresh"))
    for table in ("trials", "history", "applied"):
        assert records.read(table).num_rows == 0
        assert records.read_trial(table, 3).num_rows == 0
    assert records.read("trials").schema == TRIALS_SCHEMA
    run = RunDir(str(tmp_path / "fresh"))
    assert run.read_json("paused.json", []) == []
    assert run.read_text("config.yaml", None) is None
    with pytest.raises(FileNotFoundError):
        run.read_json("paused.json")
    assert ControlChannel(run).paused() == set()
    assert ControlChannel(run).live() is None
    assert not os.path.exists(tmp_path / "fresh")  # reading created nothing


def test_a_corrupt_parquet_file_raises_naming_it(tmp_path):
    records = write_run(tmp_path)
    bad = tmp_path / "history" / "trial-00001.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(RunDirError, match=str(bad)):
        records.read("history")
    with pytest.raises(RunDirError, match=str(bad)):
        records.read_trial("history", 1)
    assert records.read_trial("history", 0).num_rows == 2  # the others still read


def test_corrupt_json_raises_naming_the_file(tmp_path):
    (tmp_path / "paused.json").write_text("[1, 2")
    with pytest.raises(RunDirError, match=f"{tmp_path}/paused.json: cannot parse JSON"):
        ControlChannel(str(tmp_path)).paused()


def test_a_directory_in_place_of_a_file_is_an_error_not_absent(tmp_path):
    os.makedirs(tmp_path / "trials" / "trial-00004.parquet")
    os.makedirs(tmp_path / "live.json")
    with pytest.raises(RunDirError, match="trial-00004.parquet: cannot read"):
        RunRecords(str(tmp_path)).read_trial("trials", 4)
    with pytest.raises(RunDirError, match="live.json: cannot read"):
        ControlChannel(str(tmp_path)).live()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_an_error_not_absent(tmp_path):
    path = tmp_path / "trials" / "trial-00000.parquet"
    write_run(tmp_path)
    path.chmod(0)
    try:
        with pytest.raises(RunDirError, match=str(path)):
            RunRecords(str(tmp_path)).read_trial("trials", 0)
    finally:
        path.chmod(0o644)


def test_a_corrupt_control_request_is_dropped_not_fatal(tmp_path):
    channel = ControlChannel(str(tmp_path))
    channel.request("pause", 1)
    (tmp_path / "control" / "00000000000000000000-broken.json").write_text("{")
    assert channel.take() == [{"action": "pause", "trial": 1}]
    assert files_under(tmp_path) == []


def test_trials_files_without_the_newer_columns_still_read(tmp_path):
    old = TRIALS_SCHEMA.remove(TRIALS_SCHEMA.get_field_index("checkpoint"))
    os.makedirs(tmp_path / "trials")
    pq.write_table(pa.Table.from_pylist([trial_row(0, "COMPLETE", [1.0])], schema=old),
                   tmp_path / "trials" / "trial-00000.parquet")
    (row,) = RunRecords(str(tmp_path)).read("trials").to_pylist()
    assert row["checkpoint"] is None and row["value"] == 1.0


# --- names ---------------------------------------------------------------------------------------

def test_relative_and_uri_of_round_trip_for_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir("runs/x")
    uri = run.uri_of(RunDir.checkpoint_dir(3))
    assert uri == str(tmp_path / "runs" / "x" / "checkpoints" / "trial-00003")
    assert run.relative(uri) == "checkpoints/trial-00003"
    assert run.relative("runs/x/checkpoints/trial-00003/ckpt-000000010.arrow") == \
        "checkpoints/trial-00003/ckpt-000000010.arrow"
    assert run.relative(run.path("best.json")) == "best.json"
    assert run.relative(run.uri_of("")) == ""
    assert child_uri("runs/x", "a/b") == run.uri_of("a/b")
    for outside in ("runs/y/checkpoints", "runs/x/../y", "runs/xx/a", "s3://b/runs/x/a"):
        with pytest.raises(ValueError):
            run.relative(outside)


def test_relative_and_uri_of_round_trip_for_an_s3_uri():
    run = RunDir(S3_URI)
    uri = run.uri_of("checkpoints/trial-00003")
    assert uri == ("s3://sweeps/runs/x/checkpoints/trial-00003"
                   "?endpoint_override=127.0.0.1:9000&scheme=http")
    assert run.relative(uri) == "checkpoints/trial-00003"
    assert run.relative("s3://sweeps/runs/x/best.json") == "best.json"  # the query may differ
    assert RunDir(S3_URI.replace("/x?", "/x/?")).relative(uri) == "checkpoints/trial-00003"
    for outside in ("s3://other/runs/x/a", "s3://sweeps/runs/xy/a", "gs://sweeps/runs/x/a",
                    "/runs/x/a"):
        with pytest.raises(ValueError):
            run.relative(outside)
    moved = RunDir("s3://backup/old/x?endpoint_override=127.0.0.1:9000&scheme=http")
    assert moved.uri_of(run.relative(uri)).startswith("s3://backup/old/x/checkpoints/trial-00003?")


def test_s3_run_dir_reads_and_writes_for_real(monkeypatch):
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    from tests.conftest import S3_TEST_ENV

    for name, value in S3_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
        client.create_bucket(Bucket="sweeps")
        uri = f"s3://sweeps/runs/x?endpoint_override={host}:{port}&scheme=http"
        run = RunDir(uri)
        assert run.read_json("paused.json", []) == [] and not run.is_dir()
        records = write_run(uri)
        run.write_json("paused.json", [2])
        assert run.read_json("paused.json") == [2] and run.is_dir()
        assert records.read("trials").num_rows == 3
        assert records.read_trial("trials", 7).num_rows == 0
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="sweeps")["Contents"]}
        assert "runs/x/trials/trial-00000.parquet" in keys
        assert not [k for k in keys if ".tmp" in k]
        client.put_object(Bucket="sweeps", Key="runs/x/applied/trial-00001.parquet", Body=b"x")
        with pytest.raises(RunDirError, match="runs/x/applied/trial-00001.parquet"):
            records.read("applied")
        run.delete("paused.json")
        assert not run.exists("paused.json")
    finally:
        server.stop()


# --- exports -------------------------------------------------------------------------------------

def read_csv(path, schema):
    types = {f.name: (pa.string() if pa.types.is_list(f.type) else f.type) for f in schema}
    return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types=types, strings_can_be_null=True)).to_pylist()


def test_csv_export_of_list_values_round_trips(tmp_path):
    records = write_run(tmp_path / "run")
    out = tmp_path / "out"
    paths = export(str(tmp_path / "run"), str(out), "csv")
    assert paths == [str(out / f"{t}.csv") for t in ("trials", "history", "applied")]
    assert files_under(out) == ["applied.csv", "history.csv", "trials.csv"]
    want = records.read("trials").to_pylist()
    got = read_csv(out / "trials.csv", TRIALS_SCHEMA)
    for row in got:
        row["values"] = None if row["values"] is None else json.loads(row["values"])
    assert got == want
    assert got[0]["values"] == [0.25, 1.5e-7]
    for table in ("history", "applied"):
        assert read_csv(out / f"{table}.csv", records.read(table).schema) == \
            records.read(table).to_pylist()


def test_parquet_export_through_the_cli(tmp_path, capsys):
    records = write_run(tmp_path)
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main(["export", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == \
        [str(tmp_path / "export" / f"{t}.parquet") for t in ("trials", "history", "applied")]
    assert pq.read_table(tmp_path / "export" / "trials.parquet").to_pylist() == \
        records.read("trials").to_pylist()
    assert main(["export", str(tmp_path), "--format", "csv"]) == 0
    assert len(read_csv(tmp_path / "export" / "history.csv", records.read("history").schema)) == 6


def test_a_failed_export_writes_nothing(tmp_path):
    write_run(tmp_path / "run")
    (tmp_path / "run" / "applied" / "trial-00002.parquet").write_bytes(b"broken")
    with pytest.raises(RunDirError, match="trial-00002.parquet"):
        export(str(tmp_path / "run"), str(tmp_path / "out"), "csv")
    assert not os.path.exists(tmp_path / "out")
