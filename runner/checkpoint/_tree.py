"""State trees to rows and back: how every container and leaf kind is encoded.

Rows are the tree's nodes in pre-order, each naming its parent row, so any Arrow reader sees the
whole structure. torch and jax are never imported to save (a tensor of theirs means they already
are) and only imported to load when the file holds their tensors. Loading never imports a class
named in the file: containers that are not dict/list/tuple come back as dicts or tuples, or take
the template's structure when the caller passes `like=`.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, Callable, Mapping

import numpy as np

from runner.checkpoint._format import CheckpointError, Row

SCHEDULES_FORMAT = "sweep.schedules/1"
_HYPERPARAM_KEYS = ("group", "name", "key", "spec", "state", "value")
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_CONTAINERS = {"dict", "list", "tuple", "node", "schedules"}
_NUMPY_NAMES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64", "complex64", "complex128"}


def _segment(key: Any) -> str:
    """A JSON-pointer (RFC 6901) path segment."""
    return str(key).replace("~", "~0").replace("/", "~1")


def check_json(obj: Any, where: str) -> None:
    """Refuse anything that would not come back identical from JSON (tuples, int keys, objects)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            check_json(item, f"{where}[{i}]")
    elif isinstance(obj, dict):
        for key, item in obj.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: JSON object keys must be str, got {key!r}")
            check_json(item, f"{where}.{key}")
    else:
        raise ValueError(f"{where}: {type(obj).__name__} is not JSON-safe "
                         "(dict with str keys, list, str, int, float, bool, None)")


def _float_json(x: float) -> str:
    return json.dumps(x) if math.isfinite(x) else json.dumps(repr(x))  # "nan", "inf", "-inf"


# ---------------------------------------------------------------------------------------------
# saving


def _numpy_payload(a: np.ndarray) -> Callable[[bool], np.ndarray]:
    def payload(copy: bool) -> np.ndarray:
        raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        return raw.copy() if copy and np.may_share_memory(raw, a) else raw
    return payload


def _numpy_dtype_name(dtype: np.dtype, where: str) -> str:
    name = dtype.name
    try:
        ok = not dtype.hasobject and _NAME_RE.fullmatch(name) and numpy_dtype(name) == dtype
    except CheckpointError:
        ok = False
    if not ok:
        raise TypeError(f"{where}: numpy dtype {dtype!r} cannot be stored as raw bytes")
    return name


def _torch_leaf(t: Any, row: Row, where: str) -> None:
    import torch  # already imported: `t` is a tensor

    if t.layout != torch.strided or t.is_quantized:
        raise TypeError(f"{where}: only dense tensors can be saved, got layout {t.layout}")

    def payload(copy: bool) -> np.ndarray:
        src = t.detach()
        cpu = src.resolve_conj().resolve_neg().to("cpu").contiguous()
        raw = cpu.reshape(-1).view(torch.uint8).numpy()
        shares = src.device.type == "cpu" and \
            cpu.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()
        return raw.copy() if copy and shares else raw

    row.dtype = str(t.dtype).removeprefix("torch.")
    row.shape = list(t.shape)
    row.device = str(t.device)
    row.nbytes = t.numel() * t.element_size()
    row.payload = payload


def _jax_leaf(x: Any, row: Row) -> None:
    import jax  # already imported: `x` is a jax array

    device = next(iter(x.devices()))
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        row.kind = "jax_key"
        row.json = json.dumps(str(jax.random.key_impl(x)))
        x = jax.random.key_data(x)
    on_host = device.platform == "cpu"

    def payload(copy: bool) -> np.ndarray:
        raw = np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)
        return raw.copy() if copy and on_host else raw

    row.dtype = np.dtype(x.dtype).name
    row.shape = list(x.shape)
    row.device = f"{device.platform}:{device.id}"
    row.nbytes = x.size * x.dtype.itemsize
    row.payload = payload


def _leaf(obj: Any, row: Row, where: str) -> None:
    """Fill `row` for a leaf, or raise TypeError for an unsupported object."""
    torch, jax = sys.modules.get("torch"), sys.modules.get("jax")
    if obj is None:
        row.kind = "none"
    elif isinstance(obj, bool):
        row.kind, row.json = "bool", json.dumps(obj)
    elif isinstance(obj, int):
        row.kind, row.json = "int", str(int(obj))
    elif isinstance(obj, np.generic):  # before float: np.float64 is a float
        a = np.asarray(obj)
        row.kind, row.dtype, row.shape = "numpy_scalar", _numpy_dtype_name(a.dtype, where), []
        row.nbytes, row.payload = a.nbytes, _numpy_payload(a)
    elif isinstance(obj, float):
        row.kind, row.json = "float", _float_json(obj)
    elif isinstance(obj, str):
        row.kind, row.json = "str", json.dumps(obj, ensure_ascii=False)
    elif isinstance(obj, bytes):
        a = np.frombuffer(obj, np.uint8)
        row.kind, row.dtype, row.shape, row.nbytes = "bytes", "uint8", [len(obj)], len(obj)
        row.payload = lambda copy: a  # immutable: never needs a copy
    elif isinstance(obj, np.ndarray):
        row.kind, row.dtype, row.shape = "numpy", _numpy_dtype_name(obj.dtype, where), list(obj.shape)
        row.nbytes, row.payload = obj.nbytes, _numpy_payload(obj)
    elif torch is not None and isinstance(obj, torch.Tensor):
        row.kind = "torch"
        _torch_leaf(obj, row, where)
    elif jax is not None and isinstance(obj, jax.Array):
        row.kind = "jax"
        _jax_leaf(obj, row)
    else:
        raise TypeError(f"{where}: cannot checkpoint a {type(obj).__module__}."
                        f"{type(obj).__qualname__}")


def _schedules(obj: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """Check a `sweep.schedules/1` dict has exactly the documented shape; return its hyperparams."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{where}: a {SCHEDULES_FORMAT} dict needs {what}")

    need(set(obj) == {"format", "last_epoch", "hyperparams"},
         "exactly the keys format, last_epoch, hyperparams")
    need(type(obj["last_epoch"]) is int, "an int last_epoch")
    need(isinstance(obj["hyperparams"], list), "a list of hyperparams")
    for i, hp in enumerate(obj["hyperparams"]):
        at = f"hyperparams[{i}]"
        need(isinstance(hp, dict) and set(hp) == set(_HYPERPARAM_KEYS),
             f"{at} with exactly the keys {', '.join(_HYPERPARAM_KEYS)}")
        need(type(hp["group"]) is int, f"an int {at}.group")
        need(isinstance(hp["name"], str) and isinstance(hp["key"], str), f"str {at}.name and .key")
        need(isinstance(hp["spec"], dict) and isinstance(hp["spec"].get("kind"), str),
             f"a dict {at}.spec with a str kind")
        need(hp["state"] is None or isinstance(hp["state"], dict), f"a dict or None {at}.state")
        need(type(hp["value"]) is float, f"a float {at}.value")
        check_json(hp["spec"], f"{where}/{at}.spec")
        check_json(hp["state"], f"{where}/{at}.state")
    return obj["hyperparams"]


def _children(obj: Any, row: Row, where: str) -> list[tuple[str | None, int | None, Any]] | None:
    """Classify a container into `row.kind`; return its (key, index, child) list, or None for a leaf."""
    if isinstance(obj, dict):
        row.kind = "dict"
        out = []
        for k, v in obj.items():
            if type(k) is str:
                out.append((k, None, v))
            elif type(k) is int:
                out.append((None, k, v))
            else:
                raise TypeError(f"{where}: dict keys must be str or int, got {k!r}")
        return out
    if isinstance(obj, tuple) and hasattr(type(obj), "_fields"):  # namedtuple
        row.kind, row.json = "node", json.dumps(f"{type(obj).__module__}.{type(obj).__qualname__}")
        return [(name, i, v) for i, (name, v) in enumerate(zip(obj._fields, obj))]
    if isinstance(obj, (list, tuple)):
        row.kind = "list" if isinstance(obj, list) else "tuple"
        return [(None, i, v) for i, v in enumerate(obj)]
    jax = sys.modules.get("jax")
    if jax is None or obj is None:
        return None
    flat, _ = jax.tree_util.tree_flatten_with_path(obj, is_leaf=lambda x: x is not obj)
    if len(flat) == 1 and flat[0][0] == ():
        return None  # not a registered pytree node
    row.kind, row.json = "node", json.dumps(f"{type(obj).__module__}.{type(obj).__qualname__}")
    out = []
    for i, (keypath, child) in enumerate(flat):
        key = _jax_key(keypath[0])
        out.append((key if isinstance(key, str) else None, i, child))
    return out


def _jax_key(entry: Any) -> Any:
    """The plain key of a jax key-path entry (GetAttrKey, DictKey, SequenceKey, FlattenedIndexKey)."""
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def flatten(state: Any) -> list[Row]:
    """The rows of `state` in pre-order; payloads stay lazy (materialised when written)."""
    rows: list[Row] = []

    def visit(obj: Any, path: str, parent: int | None, key: str | None, index: int | None) -> None:
        row = Row(path=path, kind="", parent=parent, key=key, index=index)
        me = len(rows)
        rows.append(row)
        where = path or "/"
        if isinstance(obj, dict) and obj.get("format") == SCHEDULES_FORMAT:
            hyperparams = _schedules(obj, where)
            row.kind, row.json, row.step = "schedules", json.dumps(SCHEDULES_FORMAT), obj["last_epoch"]
            for i, hp in enumerate(hyperparams):
                rows.append(Row(
                    path=f"{path}/hyperparams/{i}", kind="schedule", parent=me, index=i,
                    step=obj["last_epoch"], param_group=hp["group"], hyperparameter=hp["name"],
                    param_key=hp["key"], schedule_kind=hp["spec"]["kind"], value=hp["value"],
                    spec=json.dumps(hp["spec"]),
                    state=None if hp["state"] is None else json.dumps(hp["state"])))
            return
        children = _children(obj, row, where)
        if children is None:
            _leaf(obj, row, where)
            return
        for k, i, child in children:
            visit(child, f"{path}/{_segment(k if k is not None else i)}", me, k, i)

    visit(state, "", None, None, None)
    return rows


def snapshot(rows: list[Row]) -> int:
    """Copy every payload to host memory now, so the caller may mutate its state; return the bytes."""
    total = 0
    for row in rows:
        if row.payload is not None:
            raw = row.payload(True)
            row.payload = lambda copy, raw=raw: raw
            total += raw.nbytes
    return total


# ---------------------------------------------------------------------------------------------
# loading


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype a stored name denotes (ml_dtypes names such as bfloat16 included)."""
    if name not in _NUMPY_NAMES and _NAME_RE.fullmatch(name):
        try:
            import ml_dtypes  # comes with jax; numpy needs it for bfloat16 and the float8s
        except ImportError:
            pass
        else:
            special = getattr(ml_dtypes, name, None)
            if isinstance(special, type):
                return np.dtype(special)
    try:
        return np.dtype(name)
    except TypeError:
        raise CheckpointError(f"unknown numpy dtype {name!r}") from None


def _torch_dtype(name: str) -> Any:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"unknown torch dtype {name!r}")
    return dtype


def _jax_device(map_location: str | None) -> Any:
    import jax

    if map_location is None:
        return None
    platform, _, index = map_location.partition(":")
    return jax.devices(platform)[int(index or 0)]


def _array(raw: np.ndarray, dtype: str, shape: list[int]) -> np.ndarray:
    dt = numpy_dtype(dtype)
    if raw.nbytes != dt.itemsize * math.prod(shape):
        raise CheckpointError(f"payload size does not match dtype {dtype} and shape {shape}")
    return raw.view(dt).reshape(shape)


def _decode_leaf(kind: str, cols: dict[str, list[Any]], i: int, raw: np.ndarray | None,
                 map_location: str | None) -> Any:
    text, dtype, shape = cols["json"][i], cols["dtype"][i], cols["shape"][i]
    if kind == "none":
        return None
    if kind in ("bool", "int", "str"):
        value = json.loads(text)
        if type(value) is not {"bool": bool, "int": int, "str": str}[kind]:
            raise CheckpointError(f"row {i}: {kind} value {text!r}")
        return value
    if kind == "float":
        return float(json.loads(text))
    if raw is None:
        raise CheckpointError(f"row {i}: a {kind} leaf without data")
    if kind == "bytes":
        return raw.tobytes()
    if kind == "numpy":
        return _array(raw, dtype, shape)
    if kind == "numpy_scalar":
        return _array(raw, dtype, shape)[()]
    if kind == "torch":
        import torch

        tdtype = _torch_dtype(dtype)
        if raw.nbytes != tdtype.itemsize * math.prod(shape):
            raise CheckpointError(f"row {i}: payload size does not match {dtype}{shape}")
        if raw.nbytes:
            t = torch.from_numpy(raw).view(tdtype).reshape(shape)
        else:
            t = torch.empty(shape, dtype=tdtype)
        return t if map_location in (None, "cpu") else t.to(map_location)
    if kind in ("jax", "jax_key"):
        import jax

        x = jax.device_put(_array(raw, dtype, shape), _jax_device(map_location))
        return jax.random.wrap_key_data(x, impl=json.loads(text)) if kind == "jax_key" else x
    raise CheckpointError(f"row {i}: unknown kind {kind!r} (written by a newer sweep?)")


def build(cols: dict[str, list[Any]], payloads: list[np.ndarray | None],
          map_location: str | None) -> Any:
    """Rebuild the state from verified rows; generic nodes become dicts (named) or tuples."""
    kinds, parents = cols["kind"], cols["parent"]
    n = len(kinds)
    if n == 0 or parents[0] is not None:
        raise CheckpointError("the first row must be the root")
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        p = parents[i]
        if p is None or not 0 <= p < i or kinds[p] not in _CONTAINERS:
            raise CheckpointError(f"row {i}: bad parent {p}")
        children[p].append(i)
    built: list[Any] = [None] * n
    for i in reversed(range(n)):
        kind, kids = kinds[i], children[i]
        if kind == "schedule":
            built[i] = {"group": cols["param_group"][i], "name": cols["hyperparameter"][i],
                        "key": cols["param_key"][i], "spec": json.loads(cols["spec"][i]),
                        "state": None if cols["state"][i] is None else json.loads(cols["state"][i]),
                        "value": cols["value"][i]}
        elif kind == "schedules":
            built[i] = {"format": json.loads(cols["json"][i]), "last_epoch": cols["step"][i],
                        "hyperparams": [built[c] for c in kids]}
        elif kind == "dict":
            built[i] = {cols["key"][c] if cols["key"][c] is not None else cols["index"][c]: built[c]
                        for c in kids}
        elif kind == "list":
            built[i] = [built[c] for c in kids]
        elif kind == "tuple":
            built[i] = tuple(built[c] for c in kids)
        elif kind == "node":
            if kids and all(cols["key"][c] is not None for c in kids):
                built[i] = {cols["key"][c]: built[c] for c in kids}
            else:
                built[i] = tuple(built[c] for c in kids)
        else:
            built[i] = _decode_leaf(kind, cols, i, payloads[i], map_location)
        for c in kids:
            built[c] = None  # drop references as we go: the parent holds them now
    return built[0]


def _leaf_paths(obj: Any, path: tuple = ()) -> dict[tuple, Any]:
    """Leaves of a rebuilt state by key path, None dropped (jax treats None as an empty node)."""
    if isinstance(obj, dict):
        out: dict[tuple, Any] = {}
        for k, v in obj.items():
            out.update(_leaf_paths(v, path + (k,)))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_leaf_paths(v, path + (i,)))
        return out
    return {} if obj is None else {path: obj}


def restore_like(state: Any, like: Any) -> Any:
    """Put the loaded leaves into the template pytree `like`; ValueError if paths or shapes differ
    (the caller's template is wrong, the file is fine). A template dict may leave out entries of
    the state's dict: those come back as loaded."""
    if isinstance(like, dict) and isinstance(state, dict) and like.keys() < state.keys():
        return {k: restore_like(v, like[k]) if k in like else v for k, v in state.items()}
    import jax

    ours = _leaf_paths(state)
    theirs, treedef = jax.tree_util.tree_flatten_with_path(like)
    wanted = [tuple(_jax_key(entry) for entry in keypath) for keypath, _ in theirs]
    missing = [p for p in wanted if p not in ours]
    extra = sorted(set(ours) - set(wanted), key=str)
    if missing or extra:
        raise ValueError(
            "the checkpoint does not match the template: "
            f"missing from checkpoint {missing[:5]}, not in template {extra[:5]}")
    leaves = []
    for path, (_, template_leaf) in zip(wanted, theirs):
        leaf = ours[path]
        if hasattr(template_leaf, "shape") and hasattr(leaf, "shape") \
                and tuple(template_leaf.shape) != tuple(leaf.shape):
            raise ValueError(f"{path}: shape {tuple(leaf.shape)} in the checkpoint, "
                                  f"{tuple(template_leaf.shape)} in the template")
        leaves.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, leaves)
