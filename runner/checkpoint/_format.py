"""The checkpoint file: one Arrow IPC file of rows, streamed out and verified on the way back in.

Integrity covers every byte of the file: tensor payloads carry their own xxh3_64 checksum (a column),
and one more xxh3_64 digest, stamped into the footer, covers every other byte (schema, metadata,
flatbuffers, padding, the checksum column itself). Payload bytes are thus hashed exactly once on
save and once on load, which keeps verification at memory speed.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import xxhash

SCHEMA_VERSION = "1.0"
VERSION_KEY = b"sweep.schema_version"
METADATA_KEY = b"sweep.metadata"
DIGEST_KEY = b"sweep.digest"
_DIGEST_PREFIX = b"xxh3_64:"
_DIGEST_RE = re.compile(rb"xxh3_64:[0-9a-f]{16}")
_ALIGN = 8
# Payloads at least this big get a record batch (and a zero-copy buffer) of their own; smaller ones
# are copied together into batches of about _GROUP_BYTES.
_OWN_BATCH_BYTES = 1 << 20
_GROUP_BYTES = 8 << 20
_GROUP_ROWS = 4096
_EMPTY_CHECKSUM = xxhash.xxh3_64_intdigest(b"")
# Verify payloads on this many threads (xxhash releases the GIL) once there is enough to share.
_THREADS = min(4, os.cpu_count() or 1)
_PARALLEL_BYTES = 64 << 20


class CheckpointError(Exception):
    """A checkpoint cannot be used: truncated, corrupt, not a checkpoint, or from a newer schema."""


SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("parent", pa.int64()),
    pa.field("key", pa.string()),
    pa.field("index", pa.int64()),
    pa.field("dtype", pa.string()),
    pa.field("shape", pa.list_(pa.int64())),
    pa.field("device", pa.string()),
    pa.field("json", pa.string()),
    pa.field("step", pa.int64()),
    pa.field("param_group", pa.int64()),
    pa.field("hyperparameter", pa.string()),
    pa.field("param_key", pa.string()),
    pa.field("schedule_kind", pa.string()),
    pa.field("value", pa.float64()),
    pa.field("spec", pa.string()),
    pa.field("state", pa.string()),
    pa.field("nbytes", pa.int64()),
    pa.field("data", pa.large_binary()),
    pa.field("checksum", pa.uint64()),  # after data: the writer fills it in as the data streams out
])
_COLUMNS = [f.name for f in SCHEMA if f.name not in ("checksum", "data")]


@dataclass(slots=True)
class Row:
    """One node of the state tree; `payload(copy)` yields its raw bytes (uint8, 1-D, contiguous)."""

    path: str
    kind: str
    parent: int | None = None
    key: str | None = None
    index: int | None = None
    dtype: str | None = None
    shape: list[int] | None = None
    device: str | None = None
    json: str | None = None
    step: int | None = None
    param_group: int | None = None
    hyperparameter: str | None = None
    param_key: str | None = None
    schedule_kind: str | None = None
    value: float | None = None
    spec: str | None = None
    state: str | None = None
    nbytes: int | None = None
    payload: Callable[[bool], np.ndarray] | None = None


class _DigestSink:
    """The file object pyarrow's IPC writer writes to.

    pyarrow hands each body buffer over as the very `pa.Buffer` of the batch, so the sink knows
    payloads by address: it writes each one out while checksumming it on the side, and writes
    those checksums in place of the batch's placeholder checksum buffer, which comes after the
    data. Every other byte feeds the file digest. What `close()` writes (the footer) is held back
    until the digest is stamped in.
    """

    def __init__(self, out: Any, hasher: ThreadPoolExecutor) -> None:
        self._out = out
        self._hasher = hasher
        self._digest = xxhash.xxh3_64()
        self._pos = 0
        self._batch: _Batch | None = None
        self._starts: list[int] = []
        self._streamed = 0
        self._tail: bytearray | None = None
        self.closed = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def write_batch(self, writer: pa.ipc.RecordBatchFileWriter, batch: _Batch) -> None:
        """Have `writer` write `batch` through this sink, its payloads and checksums included."""
        self._batch, self._starts, self._streamed = batch, [p[0] for p in batch.payloads], 0
        writer.write_batch(batch.record_batch)
        if self._batch is not None:
            raise RuntimeError("pyarrow did not write the checksum buffer it was given")

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        self._pos += n
        if self._tail is not None:
            self._tail += view
        elif self._batch is None or not isinstance(data, pa.Buffer):
            self._send(view)
        elif data.address == self._batch.checksums_address and n == self._batch.checksums.nbytes:
            if self._streamed != len(self._batch.payloads):
                raise RuntimeError("pyarrow wrote the checksums before the payloads")
            self._send(memoryview(self._batch.checksums).cast("B"))
            self._batch = None
        else:
            self._stream(data.address, view)
        return n

    def _send(self, view: memoryview) -> None:
        if view.nbytes:
            self._digest.update(view)
            self._write_all(view)

    def _write_all(self, view: memoryview) -> None:
        """Write all of `view`: a raw local file may take less per call (Linux: 2 GiB at most)."""
        while view.nbytes:
            view = view[self._out.write(view):]

    def _stream(self, address: int, view: memoryview) -> None:
        """Send a buffer, checksumming (not digesting) the payloads inside it."""
        batch, done = self._batch, 0
        i = bisect.bisect_left(self._starts, address)
        while i < len(self._starts) and self._starts[i] < address + view.nbytes:
            start, nbytes, row = batch.payloads[i]
            lo = start - address
            if lo + nbytes > view.nbytes:
                raise RuntimeError("pyarrow split a payload buffer")
            self._send(view[done:lo])
            batch.checksums[row] = self._checksum_out(view[lo:lo + nbytes])
            self._streamed += 1
            done = lo + nbytes
            i += 1
        self._send(view[done:])

    def _checksum_out(self, payload: memoryview) -> int:
        """Write a payload in one call while the hasher thread checksums it: the kernel's copy and
        the hash run side by side, and one big write lets the page cache hold the payload in large
        folios, which map fastest on load. (Measured on Linux 6.18/ext4, 1.2 GB: 4 MiB chunks
        hashed on one thread saved at 3.6 GB/s and loaded at 21; this saves at 4.0 and loads at
        24, against 4.4 and 26 for raw writes and a memory-mapped read of the same bytes.)"""
        checksum = self._hasher.submit(xxhash.xxh3_64_intdigest, payload)
        self._write_all(payload)
        return checksum.result()

    def hold_tail(self) -> None:
        self._tail = bytearray()

    def stamp_tail(self, placeholder: bytes) -> None:
        """Digest the held-back footer with a zeroed slot, stamp the digest in, and send it."""
        tail = self._tail
        at = tail.find(placeholder)
        if at < 0 or tail.find(placeholder, at + 1) >= 0:
            raise RuntimeError("digest placeholder not found exactly once in the footer")
        slot = slice(at + len(_DIGEST_PREFIX), at + len(placeholder))
        tail[slot] = b"0" * 16
        self._digest.update(tail)
        tail[slot] = self._digest.hexdigest().encode()
        self._write_all(memoryview(tail))


def _pad(n: int) -> int:
    return -n % _ALIGN


def _groups(rows: list[Row]) -> Iterator[list[Row]]:
    """Consecutive runs of rows for one record batch each: big payloads alone, the rest grouped."""
    group, size = [], 0
    for row in rows:
        if (row.nbytes or 0) >= _OWN_BATCH_BYTES:
            if group:
                yield group
            yield [row]
            group, size = [], 0
            continue
        group.append(row)
        size += row.nbytes or 0
        if size >= _GROUP_BYTES or len(group) >= _GROUP_ROWS:
            yield group
            group, size = [], 0
    if group:
        yield group


@dataclass
class _Batch:
    record_batch: pa.RecordBatch
    payloads: list[tuple[int, int, int]]  # (address, nbytes, row) of non-empty payloads, in order
    checksums: np.ndarray  # uint64 per row, filled in by the sink as the payloads stream out
    checksums_address: int


def _batch(rows: list[Row]) -> _Batch:
    """A record batch of `rows`: a lone payload is its own buffer (zero-copy), several are
    copied into one buffer, each padded so that the next starts 8-byte aligned."""
    arrays = [row.payload(False) if row.payload else None for row in rows]
    present = [(i, a) for i, a in enumerate(arrays) if a is not None]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    if len(present) == 1 and present[0][0] == len(rows) - 1:
        values = present[0][1]
        offsets[-1] = values.nbytes
    else:
        pos = 0
        for i, a in enumerate(arrays):
            offsets[i] = pos
            if a is not None:
                pos += a.nbytes + (_pad(a.nbytes) if i < len(rows) - 1 else 0)
        offsets[-1] = pos
        values = np.zeros(pos, dtype=np.uint8)
        for i, a in present:
            values[offsets[i]:offsets[i] + a.nbytes] = a
    checksums = np.zeros(len(rows), dtype=np.uint64)
    for i, a in present:
        if not a.nbytes:
            checksums[i] = _EMPTY_CHECKSUM
    has = [a is not None for a in arrays]
    validity = None if all(has) else pa.array(has, pa.bool_()).buffers()[1]
    checksum_buffer = pa.py_buffer(checksums)
    columns = [pa.array([getattr(r, name) for r in rows], SCHEMA.field(name).type)
               for name in _COLUMNS]
    columns.append(pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(rows), [validity, pa.py_buffer(offsets), pa.py_buffer(values)]))
    columns.append(pa.Array.from_buffers(pa.uint64(), len(rows), [validity, checksum_buffer]))
    base = values.ctypes.data
    payloads = [(base + int(offsets[i]), a.nbytes, i) for i, a in present if a.nbytes]
    return _Batch(pa.RecordBatch.from_arrays(columns, schema=SCHEMA), payloads, checksums,
                  checksum_buffer.address)


def write_rows(out: Any, rows: list[Row], metadata: dict[str, Any]) -> int:
    """Stream `rows` to the writable `out` as one Arrow IPC file; return its size (`out` stays open)."""
    schema = SCHEMA.with_metadata({VERSION_KEY: SCHEMA_VERSION.encode(),
                                   METADATA_KEY: json.dumps(metadata).encode()})
    placeholder = _DIGEST_PREFIX + secrets.token_hex(8).encode()
    with ThreadPoolExecutor(1, thread_name_prefix="checkpoint-hash") as hasher:
        sink = _DigestSink(out, hasher)
        writer = pa.ipc.new_file(pa.PythonFile(sink, mode="w"), schema,
                                 metadata={DIGEST_KEY: placeholder})
        for group in _groups(rows):
            sink.write_batch(writer, _batch(group))
    sink.hold_tail()
    writer.close()
    sink.stamp_tail(placeholder)
    return sink.tell()


@dataclass
class FileContents:
    """A verified checkpoint file: its metadata, its columns as lists, and payload views."""

    metadata: dict[str, Any]
    columns: dict[str, list[Any]]
    payloads: list[np.ndarray | None]  # writable views into `base` (no copy)


def check_version(schema_metadata: dict[bytes, bytes]) -> None:
    raw = schema_metadata.get(VERSION_KEY)
    if raw is None:
        raise CheckpointError("not a sweep checkpoint: no schema version in the Arrow schema metadata")
    try:
        major, minor = (int(x) for x in raw.decode().split("."))
    except ValueError:
        raise CheckpointError(f"unreadable schema version {raw!r}") from None
    ours = int(SCHEMA_VERSION.split(".")[0])
    if major > ours:
        raise CheckpointError(
            f"checkpoint schema version {major}.{minor} is newer than this reader's "
            f"{SCHEMA_VERSION}; upgrade sweep to load it")
    if major < ours:
        raise CheckpointError(f"checkpoint schema version {major}.{minor} is no longer supported")


def read_file(base: np.ndarray) -> FileContents:
    """Parse and fully verify a checkpoint held in `base` (uint8, writable: a private map or a copy)."""
    try:
        reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(base)))
        schema_metadata = dict(reader.schema.metadata or {})
    except (pa.ArrowException, OSError) as exc:
        raise CheckpointError(f"not a complete Arrow IPC file (truncated or corrupt): {exc}") from None
    check_version(schema_metadata)
    try:
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        for batch in batches:
            batch.validate(full=True)
        if not batches or batches[0].schema.remove_metadata() != SCHEMA:
            raise CheckpointError("the file's columns are not the checkpoint schema")
        ranges = _payload_ranges(base, batches)
        _check_digest(base, (reader.metadata or {}).get(DIGEST_KEY), ranges)
        table = pa.Table.from_batches(batches)
        columns = {name: table.column(name).to_pylist() for name in _COLUMNS}
        checksums = table.column("checksum").to_pylist()
        metadata = json.loads(schema_metadata[METADATA_KEY])
    except CheckpointError:
        raise
    except (pa.ArrowException, KeyError, ValueError, OSError) as exc:
        raise CheckpointError(f"corrupt checkpoint: {exc}") from None
    payloads: list[np.ndarray | None] = [None] * table.num_rows
    for row, start, n in ranges:
        payloads[row] = base[start:start + n]
    _check_payloads(payloads, checksums, columns["path"])
    return FileContents(metadata, columns, payloads)


def _payload_ranges(base: np.ndarray, batches: list[pa.RecordBatch]) -> list[tuple[int, int, int]]:
    """(row, file offset, nbytes) of every payload, in file order, checked against the layout rules."""
    origin, size = base.ctypes.data, base.nbytes
    out, row0, last = [], 0, 0
    for batch in batches:
        data = batch.column("data")
        nbytes = batch.column("nbytes").to_pylist()
        _, off_buf, values = data.buffers()
        offsets = np.frombuffer(off_buf, np.int64)[data.offset:data.offset + len(data) + 1]
        # Empty buffers need not point into the file (pyarrow may share one static buffer).
        where = values.address - origin if values is not None and values.size else 0
        if not 0 <= where <= size - (values.size if values is not None else 0):
            raise CheckpointError("payload buffer lies outside the file")
        for i, valid in enumerate(data.is_valid().to_pylist()):
            n = nbytes[i]
            if valid != (n is not None):
                raise CheckpointError(f"row {row0 + i}: data and nbytes disagree")
            if not valid:
                continue
            start, stored = where + int(offsets[i]), int(offsets[i + 1] - offsets[i])
            if start % _ALIGN or not 0 <= stored - n < _ALIGN or start < last:
                raise CheckpointError(f"row {row0 + i}: payload misplaced in the file")
            out.append((row0 + i, start, n))
            last = start + n
        row0 += len(batch)
    return out


def _check_digest(base: np.ndarray, stamped: bytes | None, ranges: list[tuple[int, int, int]]) -> None:
    if stamped is None or not _DIGEST_RE.fullmatch(stamped):
        raise CheckpointError("the footer carries no valid file digest")
    size = base.nbytes
    footer_len = int.from_bytes(base[size - 10:size - 6].tobytes(), "little")
    footer_at = size - 10 - footer_len
    footer = base[max(footer_at, 0):size - 10].tobytes()
    found = footer.find(stamped)
    if found < 0 or footer.find(stamped, found + 1) >= 0:
        raise CheckpointError("the file digest is not where the footer says")
    slot = footer_at + found + len(_DIGEST_PREFIX)
    digest, pos = xxhash.xxh3_64(), 0
    for _, start, n in ranges:
        digest.update(base[pos:start])
        pos = start + n
    if slot < pos:
        raise CheckpointError("the file digest overlaps a payload")
    digest.update(base[pos:slot])
    digest.update(b"0" * 16)
    digest.update(base[slot + 16:])
    if digest.hexdigest().encode() != stamped[len(_DIGEST_PREFIX):]:
        raise CheckpointError("file digest mismatch: the file is corrupt")


def _check_payloads(payloads: list[np.ndarray | None], checksums: list[int | None],
                    paths: list[str]) -> None:
    work = [(i, p) for i, p in enumerate(payloads) if p is not None]
    work.sort(key=lambda item: -item[1].nbytes)  # biggest first keeps the threads evenly busy

    def digest(item: tuple[int, np.ndarray]) -> int:
        return xxhash.xxh3_64_intdigest(item[1])

    if sum(p.nbytes for _, p in work) < _PARALLEL_BYTES:
        digests = list(map(digest, work))
    else:
        with ThreadPoolExecutor(_THREADS, thread_name_prefix="checkpoint-verify") as pool:
            digests = list(pool.map(digest, work))
    for (i, _), got in zip(work, digests):
        if got != checksums[i]:
            raise CheckpointError(f"checksum mismatch in {paths[i] or '/'}: the file is corrupt")
