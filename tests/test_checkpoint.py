"""The Arrow checkpoint store: exact round trips, integrity, atomicity, retention, async, S3."""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from runner.checkpoint import (SCHEMA_VERSION, CheckpointError, CheckpointStore, SupersededError,
                               read_checkpoint, write_checkpoint)
from runner.checkpoint import _format, _store

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[1]


def assert_identical(got, want, where="/"):
    """Same structure, key order and key types, leaf kinds, dtypes, shapes and bytes (NaN-safe)."""
    if isinstance(want, torch.Tensor):
        assert type(got) is torch.Tensor, where
        assert (got.dtype, got.shape, got.device) == (want.dtype, want.shape, want.device), where
        raw = lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
        assert torch.equal(raw(got), raw(want)), where
    elif isinstance(want, (np.ndarray, np.generic)):
        assert type(got) is type(want), where
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        assert got.tobytes() == want.tobytes(), where
    elif "jax" in sys.modules and isinstance(want, sys.modules["jax"].Array):
        import jax

        assert isinstance(got, jax.Array) and got.dtype == want.dtype and got.shape == want.shape
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), where
    elif isinstance(want, dict):
        assert isinstance(got, dict), where
        assert [(type(k), k) for k in got] == [(type(k), k) for k in want], where
        for k in want:
            assert_identical(got[k], want[k], f"{where}{k}/")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_identical(g, w, f"{where}{i}/")
    elif isinstance(want, float):
        assert type(got) is float and (math.isnan(want) and math.isnan(got) or
                                       repr(got) == repr(want)), where
    else:
        assert type(got) is type(want) and got == want, where


def schedules_state(last_epoch=41):
    return {"format": "sweep.schedules/1", "last_epoch": last_epoch, "hyperparams": [
        {"group": 0, "name": "lr", "key": "lr",
         "spec": {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 3e-3,
                  "warmup_steps": 10, "decay_steps": 100, "end_value": 1e-5},
         "state": None, "value": 0.0029},
        {"group": 0, "name": "beta1", "key": "betas.0",
         "spec": {"kind": "linear", "init_value": 0.85, "end_value": 0.95, "transition_steps": 50},
         "state": {"best": float("inf"), "bad_epochs": 0}, "value": 0.932},
        {"group": 1, "name": "lr", "key": "lr", "spec": {"kind": "constant", "value": 1e-4},
         "state": None, "value": 1e-4},
    ]}


def torch_training(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 3))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optim


def train_step(model, optim):
    x = torch.randn(8, 6)
    loss = model(x).square().mean()
    optim.zero_grad()
    loss.backward()
    optim.step()


def table_of(path):
    """The checkpoint as a table, read by plain pyarrow."""
    return pa.ipc.open_file(str(path)).read_all()


def test_torch_state_round_trips_and_resumes_bit_for_bit(tmp_path):
    model, optim = torch_training()
    for _ in range(3):
        train_step(model, optim)
    random.seed(5)
    np.random.seed(5)
    rng = np.random.default_rng(9)
    state = {
        "model": model.state_dict(), "optim": optim.state_dict(), "schedules": schedules_state(),
        "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state,
                "numpy_legacy": np.random.get_state(), "python": random.getstate()},
        "data": {"epoch": 1, "index": 96}, "step": 3,
    }
    store = CheckpointStore(tmp_path)
    uri = store.save(3, state, metadata={"trial": 7, "params": {"peak_lr": 3e-3}})
    loaded = store.latest()
    assert loaded.step == 3 and loaded.uri == uri == str(tmp_path / "ckpt-000000003.arrow")
    assert loaded.metadata["trial"] == 7 and loaded.metadata["devices"] == ["cpu"]
    assert loaded.metadata["versions"]["torch"] == torch.__version__
    assert_identical(loaded.state, state)

    # Resume: restored model, optimizer and RNG streams continue exactly like the original.
    for _ in range(2):
        train_step(model, optim)
    expected = [random.random(), np.random.random(), rng.random()]
    model2, optim2 = torch_training(seed=1)
    model2.load_state_dict(loaded.state["model"])
    optim2.load_state_dict(loaded.state["optim"])
    torch.set_rng_state(loaded.state["rng"]["torch"])
    random.setstate(loaded.state["rng"]["python"])
    np.random.set_state(loaded.state["rng"]["numpy_legacy"])
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = loaded.state["rng"]["numpy"]
    for _ in range(2):
        train_step(model2, optim2)
    assert [random.random(), np.random.random(), rng2.random()] == expected
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
                                   torch.bool, torch.complex64])
def test_torch_dtypes_and_shapes(tmp_path, dtype):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4, 5, generator=gen, dtype=torch.float64) * 100
    if dtype == torch.bool:
        base = base > 0
    state = {
        "matrix": base.to(dtype),
        "transposed": base.to(dtype).t(),  # non-contiguous
        "scalar": base[0, 0].to(dtype),  # 0-d
        "empty": torch.empty(0, dtype=dtype),
        "empty_2d": torch.empty(3, 0, dtype=dtype),
        "odd": base.reshape(-1)[:7].to(dtype),  # a size that needs padding before the next row
        "after": base.reshape(-1)[:3].to(dtype),
    }
    if dtype.is_floating_point:
        state["special"] = torch.tensor([float("nan"), float("inf"), -0.0], dtype=dtype)
    write_checkpoint(str(tmp_path / "c.arrow"), state, {"step": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable buffer" warning from torch
        loaded = read_checkpoint(str(tmp_path / "c.arrow"))
    assert_identical(loaded.state, state)
    for t in loaded.state.values():
        assert t.data_ptr() % 8 == 0 or t.numel() == 0


def test_numpy_python_leaves_and_keys(tmp_path):
    import ml_dtypes

    state = {
        "ints": [0, -1, 2**200, -(2**100), True, False],
        "floats": (0.1, -0.0, float("nan"), float("inf"), -float("inf"), 5e-324, 1.7976931348623157e308),
        "text": ["", "ünïcødé ✓", 'quote " and \\ back'],
        "none": None, "bytes": [b"", b"\x00\xff" * 5],
        "empty": [{}, [], ()],
        "numpy": {"f32": np.arange(12, dtype=np.float32).reshape(3, 4),
                  "bf16": np.linspace(-2, 2, 9).astype(ml_dtypes.bfloat16),
                  "f8": np.array([0.5, -1.0], dtype=ml_dtypes.float8_e4m3fn),
                  "u16": np.arange(5, dtype=np.uint16)[::2], "zero_d": np.array(3.5),
                  "bool": np.array([True, False]), "c128": np.array([1 + 2j])},
        "scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), np.float64(0.25)],
        7: "int key", "7": "str key", "a/b~c": {0: "x", 1: "y"},
    }
    path = tmp_path / "c.arrow"
    write_checkpoint(str(path), state, {"step": 0})
    assert_identical(read_checkpoint(str(path)).state, state)
    paths = table_of(path).column("path").to_pylist()
    assert "/a~1b~0c/0" in paths and "/7" in paths and "/numpy/bf16" in paths


def test_map_location_and_saved_device(tmp_path):
    path = str(tmp_path / "c.arrow")
    write_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})
    loaded = read_checkpoint(path, map_location="meta")  # every torch build has the meta device
    assert loaded.state["w"].device.type == "meta" and loaded.metadata["devices"] == ["cpu"]
    assert table_of(path).column("device").to_pylist() == [None, "cpu"]


def test_loaded_tensors_are_private_copy_on_write(tmp_path):
    path = str(tmp_path / "c.arrow")
    write_checkpoint(path, {"w": torch.zeros(1000)}, {"step": 1})
    first = read_checkpoint(path).state["w"]
    first += 1  # in place, as an optimizer would
    assert torch.equal(read_checkpoint(path).state["w"], torch.zeros(1000))


def test_unsupported_leaves_and_keys_are_refused(tmp_path):
    path = str(tmp_path / "c.arrow")
    with pytest.raises(TypeError, match=r"/bad: cannot checkpoint a builtins.object"):
        write_checkpoint(path, {"bad": object()}, {"step": 1})
    with pytest.raises(TypeError, match="dict keys must be str or int"):
        write_checkpoint(path, {(1, 2): 1}, {"step": 1})
    with pytest.raises(TypeError, match="cannot be stored as raw bytes"):
        write_checkpoint(path, {"o": np.array([object()])}, {"step": 1})
    with pytest.raises(ValueError, match="metadata needs an int 'step'"):
        write_checkpoint(path, {}, {})
    with pytest.raises(ValueError, match=r"metadata.when: tuple is not JSON-safe"):
        write_checkpoint(path, {}, {"step": 1, "when": (1, 2)})
    assert not os.path.exists(path)


def test_generic_nodes_are_never_imported(tmp_path):
    Point = collections.namedtuple("Point", "x y")
    Point.__module__ = "no_such_module_anywhere"
    path = str(tmp_path / "c.arrow")
    write_checkpoint(path, {"p": Point(1, torch.ones(2))}, {"step": 1})
    loaded = read_checkpoint(path).state
    assert_identical(loaded["p"], {"x": 1, "y": torch.ones(2)})
    table = table_of(path)
    assert table.column("json").to_pylist()[1] == '"no_such_module_anywhere.Point"'
    assert "no_such_module_anywhere" not in sys.modules


def test_jax_optax_state_restores_into_template(tmp_path):
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")

    def make(seed):
        key = jax.random.key(seed)
        params = {"dense": {"w": jax.random.normal(key, (8, 4)),
                            "b": jnp.zeros(4, dtype=jnp.bfloat16)}, "scale": jnp.float32(1.0)}
        opt = optax.inject_hyperparams(optax.adamw)(
            learning_rate=optax.linear_schedule(1e-2, 0.0, 100), weight_decay=1e-3)
        return params, opt, opt.init(params)

    def step(params, opt, opt_state, key):
        key, sub = jax.random.split(key)
        x = jax.random.normal(sub, (5, 8))
        grads = jax.grad(lambda p: jnp.sum((x @ p["dense"]["w"] + p["dense"]["b"]) ** 2)
                         * p["scale"])(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key

    params, opt, opt_state = make(0)
    key = jax.random.key(3)
    for _ in range(3):
        params, opt_state, key = step(params, opt, opt_state, key)
    state = {"params": params, "opt_state": opt_state, "key": key,
             "legacy_key": jax.random.PRNGKey(11), "step": 3}
    store = CheckpointStore(str(tmp_path))
    store.save(3, state)

    template_params, _, template_opt_state = make(1)
    like = {"params": template_params, "opt_state": template_opt_state, "key": jax.random.key(0),
            "legacy_key": jax.random.PRNGKey(0), "step": 0}
    loaded = store.latest(like=like)
    assert jax.tree_util.tree_structure(loaded.state) == jax.tree_util.tree_structure(state)
    assert_identical(jax.tree_util.tree_leaves(loaded.state), jax.tree_util.tree_leaves(state))
    assert type(loaded.state["opt_state"]) is type(opt_state)
    assert int(loaded.state["opt_state"].hyperparams_states["learning_rate"].count) == 3

    a = (params, opt_state, key)
    b = (loaded.state["params"], loaded.state["opt_state"], loaded.state["key"])
    for _ in range(2):
        a = step(a[0], opt, a[1], a[2])
        b = step(b[0], opt, b[1], b[2])
    assert_identical(jax.tree_util.tree_leaves(b), jax.tree_util.tree_leaves(a))

    partial = store.load(3, like={"opt_state": template_opt_state})  # the rest as loaded
    assert type(partial.state["opt_state"]) is type(opt_state) and partial.state["step"] == 3
    assert isinstance(partial.state["params"], dict)
    plain = store.latest().state["opt_state"]  # no template: generic nodes as dicts and tuples
    assert set(plain) == {"count", "hyperparams", "hyperparams_states", "inner_state"}
    assert isinstance(plain["inner_state"], tuple)
    with pytest.raises(ValueError, match="does not match the template"):
        store.load(3, like={**like, "extra": jnp.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        store.load(3, like={**like, "legacy_key": jnp.zeros(3, jnp.uint32)})


def test_schedule_rows_are_queryable_with_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path / "c.arrow"
    state = {"optim": {"lr": 0.1}, "schedules": schedules_state(last_epoch=41)}
    write_checkpoint(str(path), state, {"step": 41})
    assert_identical(read_checkpoint(str(path)).state, state)

    tbl = table_of(path)  # noqa: F841 -- DuckDB finds it by name
    rows = duckdb.sql("""
        select param_group, hyperparameter, param_key, schedule_kind, step, value,
               json_extract(spec, '$.peak_value')::double as peak, state
        from tbl where kind = 'schedule' order by param_group, hyperparameter""").fetchall()
    assert rows == [
        (0, "beta1", "betas.0", "linear", 41, 0.932, None, '{"best": Infinity, "bad_epochs": 0}'),
        (0, "lr", "lr", "warmup_cosine_decay", 41, 0.0029, 3e-3, None),
        (1, "lr", "lr", "constant", 41, 1e-4, None, None),
    ]


@pytest.mark.parametrize("breakage,message", [
    (lambda s: s.pop("last_epoch"), "exactly the keys"),
    (lambda s: s["hyperparams"][0].update(value=1), r"a float hyperparams\[0\]\.value"),
    (lambda s: s["hyperparams"][1].update(state={"k": (1, 2)}), "tuple is not JSON-safe"),
    (lambda s: s["hyperparams"][2]["spec"].pop("kind"), r"hyperparams\[2\]\.spec with a str kind"),
])
def test_malformed_schedule_dicts_are_refused(tmp_path, breakage, message):
    state = schedules_state()
    breakage(state)
    with pytest.raises(ValueError, match=message):
        write_checkpoint(str(tmp_path / "c.arrow"), {"s": state}, {"step": 1})


def test_plain_pyarrow_reads_the_file_without_project_code(tmp_path):
    path = tmp_path / "c.arrow"
    weights = torch.randn(3, 4, dtype=torch.float64)
    write_checkpoint(str(path), {"w": weights, "n": 5}, {"step": 2, "trial": 1})
    code = textwrap.dedent(f"""
        import json, sys, numpy as np, pyarrow as pa, pyarrow.compute as pc, xxhash
        reader = pa.ipc.open_file({str(path)!r})
        table = reader.read_all()
        assert not any(isinstance(f.type, pa.ExtensionType) for f in table.schema)
        meta = table.schema.metadata
        row = table.filter(pc.equal(table["path"], "/w")).to_pylist()[0]
        data = row["data"][:row["nbytes"]]
        assert xxhash.xxh3_64_intdigest(data) == row["checksum"]
        value = np.frombuffer(data, row["dtype"]).reshape(row["shape"])
        print(json.dumps({{"types": [str(f.type) for f in table.schema],
                           "version": meta[b"sweep.schema_version"].decode(),
                           "step": json.loads(meta[b"sweep.metadata"])["step"],
                           "digest": reader.metadata[b"sweep.digest"].decode()[:8],
                           "value": value.tolist(), "n": json.loads(table["json"][2].as_py()),
                           "modules": sorted(m for m in sys.modules if m in ("runner", "torch"))}}))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                    text=True).stdout)
    assert set(out["types"]) <= {"string", "int64", "uint64", "double", "list<item: int64>",
                                 "large_binary"}
    assert (out["version"], out["step"], out["digest"], out["n"]) == (SCHEMA_VERSION, 2, "xxh3_64:", 5)
    assert out["value"] == weights.tolist() and out["modules"] == []


# ---------------------------------------------------------------------------------------------
# integrity


def small_checkpoint(path):
    write_checkpoint(str(path), {"w": torch.arange(6.0), "s": schedules_state(), "t": "x"},
                     {"step": 1})
    return path.read_bytes()


def test_every_flipped_byte_is_detected(tmp_path):
    path = tmp_path / "c.arrow"
    good = small_checkpoint(path)
    undetected = []
    for at in range(len(good)):
        bad = bytearray(good)
        bad[at] ^= 0x20
        path.write_bytes(bad)
        try:
            read_checkpoint(str(path))
        except CheckpointError:
            continue
        undetected.append(at)
    assert undetected == []


@pytest.mark.parametrize("keep", [0, 1, 7, 100, 0.5, -10, -1])
def test_truncated_file_is_detected(tmp_path, keep):
    path = tmp_path / "c.arrow"
    good = small_checkpoint(path)
    path.write_bytes(good[:int(keep * len(good)) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError):
        read_checkpoint(str(path))


def test_newer_schema_major_is_refused_minor_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(_format, "SCHEMA_VERSION", "2.0")
    write_checkpoint(str(tmp_path / "major.arrow"), {"w": torch.ones(2)}, {"step": 1})
    monkeypatch.setattr(_format, "SCHEMA_VERSION", "1.7")
    write_checkpoint(str(tmp_path / "minor.arrow"), {"w": torch.ones(2)}, {"step": 1})
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"schema version 2.0 is newer than this reader's 1.0"):
        read_checkpoint(str(tmp_path / "major.arrow"))
    assert read_checkpoint(str(tmp_path / "minor.arrow")).step == 1


def flip_in(path, needle):
    """Flip one byte inside the first occurrence of `needle` in the file."""
    data = bytearray(path.read_bytes())
    at = data.index(needle) + len(needle) // 2
    data[at] ^= 0x01
    path.write_bytes(data)


def test_latest_falls_back_past_corrupt_checkpoints(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path), keep_last=4)
    for step in (1, 2, 3, 4):
        store.save(step, {"w": torch.full((64,), float(step)), "note": f"step {step}"})
    flip_in(tmp_path / "ckpt-000000004.arrow", torch.full((64,), 4.0).numpy().tobytes())  # data
    flip_in(tmp_path / "ckpt-000000003.arrow", b'"step 3"')  # a JSON value
    with caplog.at_level(logging.WARNING, logger="runner.checkpoint"):
        latest = store.latest()
    assert latest.step == 2 and torch.equal(latest.state["w"], torch.full((64,), 2.0))
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2
    assert "ckpt-000000004.arrow: checksum mismatch in /w" in warned[0]
    assert "ckpt-000000003.arrow: file digest mismatch" in warned[1]
    (tmp_path / "ckpt-000000002.arrow").write_bytes(b"")
    flip_in(tmp_path / "ckpt-000000001.arrow", b"sweep.schema_version")  # the schema metadata
    assert store.latest() is None


# ---------------------------------------------------------------------------------------------
# atomicity


KILL_POINTS = {
    # where the child stops (then is killed), and the step latest() must find afterwards
    "between-payloads": ("_format._DigestSink", "write", "self.tell() > 16 << 20", 1),
    "before-rename": ("_store.os", "replace", "True", 1),
    "before-prune": ("_store.CheckpointStore", "_prune", "True", 2),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_during_save_leaves_a_loadable_checkpoint(tmp_path, point):
    owner, name, when, expected = KILL_POINTS[point]
    child = textwrap.dedent(f"""
        import sys, numpy as np
        from runner.checkpoint import CheckpointStore, _format, _store
        store = CheckpointStore({str(tmp_path)!r}, keep_last=1)
        store.save(1, {{"w": np.full(1000, 1.0)}})
        owner = {owner}
        original = getattr(owner, {name!r})
        def stop_here(*args, **kwargs):
            self = args[0] if args else None
            if {when}:
                print("stopped", flush=True)
                sys.stdin.readline()  # blocks until the parent kills us
            return original(*args, **kwargs)
        setattr(owner, {name!r}, stop_here)
        store.save(2, {{"a": np.full(4 << 20, 2.0), "b": np.full(4 << 20, 2.0)}})  # 2 x 32 MiB
        print("finished", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "stopped\n"
        temps = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
        assert len(temps) == (0 if point == "before-prune" else 1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = CheckpointStore(str(tmp_path), keep_last=1)  # removes the dead writer's temp file
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        [f"ckpt-00000000{s}.arrow" for s in ([1, 2] if point == "before-prune" else [1])]
    latest = store.latest()
    assert latest.step == expected
    assert latest.state[("w" if expected == 1 else "b")][0] == float(expected)


def test_live_writers_temp_files_are_kept(tmp_path):
    import socket

    mine = tmp_path / f".ckpt-000000005.arrow.tmp-{socket.gethostname()}-{os.getpid()}-0123abcd"
    other = tmp_path / ".ckpt-000000005.arrow.tmp-elsewhere-1-0123abcd"
    mine.write_bytes(b"partial")
    other.write_bytes(b"partial")
    store = CheckpointStore(str(tmp_path))
    assert mine.exists() and not other.exists() and store.steps() == []


def test_failed_save_keeps_previous_and_leaves_no_temp(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path), keep_last=1)
    store.save(1, {"w": torch.ones(10)})
    original = _format._DigestSink.write

    def failing(self, data):
        if self.tell() > 1000:
            raise OSError("disk full")
        return original(self, data)

    monkeypatch.setattr(_format._DigestSink, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        store.save(2, {"w": torch.ones(10_000)})
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000001.arrow"]
    assert store.latest().step == 1


# ---------------------------------------------------------------------------------------------
# retention


def test_a_superseded_writer_can_neither_publish_nor_prune(tmp_path, monkeypatch):
    stale = CheckpointStore(str(tmp_path), keep_last=1, owner="stale")
    stale.save(1, {"w": torch.ones(10)})
    replacement = CheckpointStore(str(tmp_path), keep_last=1, owner="replacement")
    assert replacement.owner() == "replacement" and replacement.latest().step == 1
    with pytest.raises(SupersededError, match="claimed by writer 'replacement'"):
        stale.save(2, {"w": torch.ones(10)})
    replacement.save(3, {"w": torch.full((10,), 3.0)})
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000003.arrow", "owner.json"]

    # Claimed while the stale writer's file is being written: it is never published.
    original = _format._DigestSink.write
    claimed = []

    def claim_midway(self, data):
        if self.tell() > 1000 and not claimed:
            claimed.append(CheckpointStore(str(tmp_path), owner="third"))
        return original(self, data)

    monkeypatch.setattr(_format._DigestSink, "write", claim_midway)
    with pytest.raises(SupersededError, match="claimed by writer 'third'"):
        replacement.save(4, {"w": torch.ones(10_000)})
    monkeypatch.setattr(_format._DigestSink, "write", original)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000003.arrow", "owner.json"]
    assert claimed[0].latest().state["w"][0] == 3.0


def test_retention_keeps_last_and_best(tmp_path):
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: float("nan"), 5: 3.0, 6: 6.0, 7: 2.5}
    store = CheckpointStore(str(tmp_path), keep_last=2, keep_best=2, metric="loss", mode="min")
    for step, loss in losses.items():
        store.save(step, {"w": torch.ones(1)}, metrics={"loss": loss, "acc": -loss})
    assert store.steps() == [2, 6, 7]  # best two by loss: 2 and 7 (nan never counts)

    store = CheckpointStore(str(tmp_path / "max"), keep_last=1, keep_best=1, metric="acc",
                            mode="max")
    for step, loss in losses.items():
        store.save(step, {"w": torch.ones(1)}, metrics={"acc": -loss})
    assert store.steps() == [2, 7]
    assert store.load(2).metadata["metrics"] == {"acc": -1.0}

    fresh = CheckpointStore(str(tmp_path / "max"), keep_last=1, keep_best=1, metric="acc",
                            mode="max")  # learns the metrics back from the files
    fresh.save(8, {"w": torch.ones(1)}, metrics={"acc": -9.0})
    assert fresh.steps() == [2, 8]


def test_invalid_store_options(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointStore(str(tmp_path), keep_last=0)
    with pytest.raises(ValueError, match="metric"):
        CheckpointStore(str(tmp_path), keep_best=1)
    with pytest.raises(ValueError, match="mode"):
        CheckpointStore(str(tmp_path), keep_best=1, metric="loss", mode="best")


# ---------------------------------------------------------------------------------------------
# asynchronous saves


def test_async_save_snapshots_and_keeps_one_save_in_flight(tmp_path, monkeypatch):
    real_write = _store._write
    release, entered_wait = threading.Event(), threading.Event()
    active, most = [0], [0]
    lock = threading.Lock()

    def slow_write(fs, path, rows, metadata, *rest):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            if path.endswith("ckpt-000000001.arrow") and not release.wait(30):
                raise AssertionError("save() did not return while the write was blocked")
            real_write(fs, path, rows, metadata, *rest)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(_store, "_write", slow_write)
    store = CheckpointStore(str(tmp_path), async_save=True)
    original_wait = store.wait

    def wait():
        entered_wait.set()
        original_wait()

    store.wait = wait
    weights = torch.zeros(1000)
    store.save(1, {"w": weights})  # returns while the write is blocked
    weights += 1  # training goes on, mutating the state in place
    second = threading.Thread(target=store.save, args=(2, {"w": weights}))
    second.start()
    assert entered_wait.wait(30)
    release.set()
    second.join()
    store.close()
    assert most[0] == 1
    assert torch.equal(store.load(1).state["w"], torch.zeros(1000))
    assert torch.equal(store.load(2).state["w"], torch.ones(1000))


def test_async_save_error_surfaces_in_wait(tmp_path, monkeypatch):
    def broken(*args):
        raise OSError("bucket gone")

    store = CheckpointStore(str(tmp_path), async_save=True)
    monkeypatch.setattr(_store, "_write", broken)
    store.save(1, {"w": torch.ones(4)})
    with pytest.raises(OSError, match="bucket gone"):
        store.wait()
    store.wait()  # reported once


def test_async_save_over_the_memory_bound_is_synchronous(tmp_path, monkeypatch):
    real_write, threads = _store._write, []

    def recording(*args):
        threads.append(threading.current_thread())
        real_write(*args)

    monkeypatch.setattr(_store, "_write", recording)
    with CheckpointStore(str(tmp_path), async_save=True, max_pending_bytes=1000) as store:
        store.save(1, {"w": torch.ones(100)})  # 400 bytes: snapshot, background write
        store.save(2, {"w": torch.ones(1000)})  # 4000 bytes: streamed from the caller's thread
    assert threads[0] is not threading.main_thread() and threads[1] is threading.main_thread()
    assert store.steps() == [1, 2]


# ---------------------------------------------------------------------------------------------
# object store


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server.get_host_and_port()
    server.stop()


def test_s3_store_against_a_local_server(s3_server, tmp_path, monkeypatch, caplog):
    import boto3

    host, port = s3_server
    for name, value in {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    s3.create_bucket(Bucket="ckpt")
    root = f"s3://ckpt/sweep/trial-3?endpoint_override={host}:{port}&scheme=http"
    state = {"model": torch_training()[0].state_dict(), "schedules": schedules_state()}
    with CheckpointStore(root, keep_last=2, async_save=True) as store:
        for step in (1, 2, 3):
            uri = store.save(step, state, metrics={"loss": 1.0 / step})
    assert uri == f"s3://ckpt/sweep/trial-3/ckpt-000000003.arrow?endpoint_override={host}:{port}&scheme=http"
    assert store.steps() == [2, 3]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ckpt")["Contents"]]
    # pyarrow leaves an empty "directory" marker when it deletes; nothing else may be there
    assert keys == ["sweep/trial-3/", "sweep/trial-3/ckpt-000000002.arrow",
                    "sweep/trial-3/ckpt-000000003.arrow"]
    assert_identical(read_checkpoint(uri).state, state)

    original = _format._DigestSink.write

    def failing(self, data):
        if self.tell() > 1000:
            raise OSError("connection reset")
        return original(self, data)

    monkeypatch.setattr(_format._DigestSink, "write", failing)
    with pytest.raises(OSError, match="connection reset"):
        CheckpointStore(root).save(4, state)  # a failed upload leaves no object behind
    monkeypatch.setattr(_format._DigestSink, "write", original)
    assert store.steps() == [2, 3]

    key = "sweep/trial-3/ckpt-000000003.arrow"
    body = bytearray(s3.get_object(Bucket="ckpt", Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket="ckpt", Key=key, Body=bytes(body))
    with caplog.at_level(logging.WARNING, logger="runner.checkpoint"):
        latest = CheckpointStore(root).latest()
    assert latest.step == 2 and latest.metadata["metrics"] == {"loss": 0.5}
    assert "ckpt-000000003.arrow" in caplog.text and "test-secret" not in caplog.text

    fenced = root.replace("trial-3", "trial-4")
    stale = CheckpointStore(fenced, owner="stale")
    stale.save(1, state)
    assert CheckpointStore(fenced, owner="replacement").owner() == "replacement"
    with pytest.raises(SupersededError, match="claimed by writer 'replacement'"):
        stale.save(2, state)
    assert stale.steps() == [1]


def test_credentials_in_uris_are_redacted(tmp_path):
    uri = "s3://b/p/ckpt-000000001.arrow?access_key=AK&secret_key=SECRET&endpoint_override=h:9"
    assert "SECRET" not in _store.redact(uri) and "AK" not in _store.redact(uri)
    assert "endpoint_override=h:9" in _store.redact(uri)


# ---------------------------------------------------------------------------------------------
# imports


def test_torch_and_jax_are_imported_only_for_their_tensors(tmp_path):
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from runner.checkpoint import write_checkpoint, read_checkpoint
        write_checkpoint({str(tmp_path / "c.arrow")!r}, {{"w": np.ones(3), "n": [1, "x"]}},
                         {{"step": 1}})
        assert read_checkpoint({str(tmp_path / "c.arrow")!r}).state["n"] == [1, "x"]
        print(sorted(m for m in ("torch", "jax", "ml_dtypes") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "[]"
