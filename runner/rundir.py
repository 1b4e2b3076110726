"""One run dir, local or on any pyarrow filesystem: its paths, its URIs and atomic writes.

Everything else names files by their path *relative* to the run dir (``trials/trial-00003.parquet``,
``paused.json``), so a run dir copied or moved elsewhere still finds its own files. Every write goes
to a temporary name in the target's directory and is moved into place, so a reader sees the old
file or the complete new one, never a half-written one. A read error is an error: only a file that
is really absent reads as absent.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import uuid
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from runner.checkpoint._store import redact

_REQUIRED = object()
_OBJECT_STORES = {"s3", "gcs", "abfs"}  # no real directories: a key needs no parent made first


class RunDirError(RuntimeError):
    """A run-dir file could not be read or written; the message names the file."""


RUN_DIR_MARKS = ("config.yaml", "study.journal")  # a sweep writes one of them first


def local_run_dir_problem(path: str, name: Optional[str] = None) -> str:
    """Why a local ``path`` can be neither made nor continued as a run dir ("" if it can): said
    before anything starts, instead of a traceback from the first write. ``name``: the sweep's,
    which a run dir's config.yaml must have (another file of that name is not a run dir)."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path!r} is a file; expected a directory for the run dir"
    if os.path.isdir(path):
        if os.listdir(path) and not any(os.path.exists(os.path.join(path, m))
                                        for m in RUN_DIR_MARKS):
            return (f"{path!r} is a non-empty directory that is not a run dir (no config.yaml); "
                    f"expected a new directory or an existing run dir")
        other = _other_sweep(os.path.join(path, "config.yaml"), name)
        if other:
            return (f"{path!r} holds a config.yaml that is {other}; expected a new directory or "
                    f"this sweep's run dir")
        return "" if os.access(path, os.W_OK | os.X_OK) else f"{path!r} is not writable"
    made, parent = [], os.path.abspath(path)
    while not os.path.exists(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{path!r} cannot be made: {parent!r} is a file"
    try:  # tried for real (os.access says yes to root, and on /proc): then taken back
        os.makedirs(path)
    except OSError as exc:
        return f"{path!r} cannot be made: {exc.strerror}"
    finally:
        for directory in made:
            if os.path.isdir(directory):
                os.rmdir(directory)
    return ""


def _other_sweep(path: str, name: Optional[str]) -> str:
    """What the config.yaml at ``path`` is if it is not sweep ``name``'s ("" if it is, or
    there is none)."""
    if name is None or not os.path.isfile(path):
        return ""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return "not a sweep config (unreadable YAML)"
    if not isinstance(data, dict) or "trainable" not in data:
        return "not a sweep config"
    return "" if data.get("name") == name else f"sweep {data.get('name')!r}'s, not {name!r}'s"


class RunDir:
    """A run dir given as a local path or a pyarrow.fs URI (``s3://bucket/p?endpoint_override=...``)."""

    def __init__(self, uri: str) -> None:
        self.uri = os.fspath(uri)
        # a local run dir is fixed against the working directory of now, not of a later use
        self._local = None if "://" in self.uri else os.path.abspath(self.uri)
        self._made: set[str] = set()  # directories this instance has created

    @functools.cached_property
    def _resolved(self) -> tuple[pafs.FileSystem, str]:
        # resolved on first use: computing URIs needs no filesystem (nor a network)
        if self._local is not None:
            return pafs.LocalFileSystem(), self._local
        try:
            fs, root = pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowException, ValueError) as exc:
            raise RunDirError(f"{redact(self.uri)}: cannot open: {exc}") from None
        return fs, root.rstrip("/")

    @property
    def fs(self) -> pafs.FileSystem:
        return self._resolved[0]

    @property
    def root(self) -> str:
        return self._resolved[1]

    def __repr__(self) -> str:
        return f"RunDir({redact(self.uri)!r})"

    # --- names -----------------------------------------------------------------------------

    def path(self, relative: str) -> str:
        """The filesystem path of ``relative``, for ``self.fs`` operations."""
        return f"{self.root}/{relative}" if relative else self.root

    def uri_of(self, relative: str) -> str:
        """The full URI (or absolute local path) of ``relative``, query parameters kept."""
        if self._local is not None:
            return os.path.join(self._local, relative) if relative else self._local
        parts = urlsplit(self.uri)
        base = parts.path.rstrip("/")
        return urlunsplit(parts._replace(path=f"{base}/{relative}" if relative else base))

    def relative(self, uri_or_path: str) -> str:
        """The inverse of ``uri_of`` (also takes a ``path``): what to store in the study, so a
        copied or moved run dir resumes from its own files. ValueError if outside the run dir."""
        value = os.fspath(uri_or_path)
        if "://" in value:
            if self._local is not None:
                raise ValueError(f"{redact(value)}: not inside the run dir {self.uri}")
            mine, theirs = urlsplit(self.uri), urlsplit(value)
            if (mine.scheme, mine.netloc) != (theirs.scheme, theirs.netloc):
                raise ValueError(f"{redact(value)}: not inside the run dir {redact(self.uri)}")
            base, target = mine.path, theirs.path
        elif self._local is None:
            base, target = self.root, value
        else:
            base, target = self._local, os.path.abspath(value)
        base = posixpath.normpath(base or "/")
        target = posixpath.normpath(target or "/")
        if target == base:
            return ""
        prefix = base.rstrip("/") + "/"
        if not target.startswith(prefix):
            raise ValueError(f"{redact(value)}: not inside the run dir {redact(self.uri)}")
        return target[len(prefix):]

    @staticmethod
    def checkpoint_dir(number: int) -> str:
        """Where trial ``number`` keeps its checkpoints, relative to the run dir."""
        return f"checkpoints/trial-{number:05d}"

    @staticmethod
    def checkpoint_file(number: int, step: int) -> str:
        """Trial ``number``'s checkpoint of ``step`` (as its checkpoint store names it)."""
        return f"{RunDir.checkpoint_dir(number)}/ckpt-{step:09d}.arrow"

    def error(self, relative: str, doing: str, exc: BaseException) -> RunDirError:
        """A RunDirError naming the file (credentials in a URI masked) and what failed."""
        return RunDirError(f"{redact(self.uri_of(relative))}: cannot {doing}: {exc}")

    # --- writing -----------------------------------------------------------------------------

    def write_files(self, files: Mapping[str, bytes]) -> None:
        """Write several files: all go to temporary names first, then each is moved into
        place, so an error while writing changes none of them."""
        temps: dict[str, str] = {}
        current = ""
        try:
            for relative, data in files.items():
                current = relative
                target = self.path(relative)
                directory, name = posixpath.split(target)
                if self.fs.type_name not in _OBJECT_STORES and directory not in self._made:
                    self.fs.create_dir(directory, recursive=True)
                    self._made.add(directory)  # one mkdir per directory, not per write
                temps[relative] = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
                with self.fs.open_output_stream(temps[relative]) as sink:
                    sink.write(data)
            for relative, temp in list(temps.items()):
                current = relative
                self.fs.move(temp, self.path(relative))
                del temps[relative]
        except OSError as exc:
            raise self.error(current, "write", exc) from None
        finally:
            for temp in temps.values():
                try:
                    self.fs.delete_file(temp)
                except OSError:
                    pass  # never created, or the filesystem is gone: the first error stands

    def copy(self, source: str, target: str) -> None:
        """Copy a file within the run dir (server-side on object stores), atomically."""
        directory, name = posixpath.split(self.path(target))
        temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            if self.fs.type_name not in _OBJECT_STORES:
                self.fs.create_dir(directory, recursive=True)
            self.fs.copy_file(self.path(source), temp)
            self.fs.move(temp, self.path(target))
        except OSError as exc:
            raise self.error(target, f"copy {source} to", exc) from None

    def checkpoint_digest(self, relative: str) -> str:
        """A checkpoint file's own digest (its footer's ``sweep.digest``): names it exactly."""
        try:
            with self.fs.open_input_file(self.path(relative)) as source:
                footer = pa.ipc.open_file(source).metadata or {}
        except (OSError, pa.ArrowInvalid) as exc:
            raise self.error(relative, "read", exc) from None
        return footer.get(b"sweep.digest", b"").decode()

    def write_bytes(self, relative: str, data: bytes) -> None:
        self.write_files({relative: data})

    def write_text(self, relative: str, text: str) -> None:
        self.write_bytes(relative, text.encode())

    def write_json(self, relative: str, value: Any) -> None:
        self.write_text(relative, json.dumps(value, indent=2, sort_keys=True) + "\n")

    def delete_tree(self) -> None:
        """Remove the whole run dir (one this process created and must not leave half-made)."""
        try:
            self.fs.delete_dir(self.path(""))
        except OSError as exc:
            raise self.error("", "delete", exc) from None

    def delete(self, relative: str, missing_ok: bool = True) -> None:
        try:
            self.fs.delete_file(self.path(relative))
        except OSError as exc:
            # object stores may report a missing key as a plain OSError: look before judging
            if self.exists(relative):
                raise self.error(relative, "delete", exc) from None
            if not missing_ok:
                raise FileNotFoundError(self.uri_of(relative)) from None

    # --- reading -----------------------------------------------------------------------------

    def read_bytes(self, relative: str) -> bytes:
        """The file's contents; FileNotFoundError if it is absent, RunDirError on any other error."""
        try:
            with self.fs.open_input_stream(self.path(relative)) as source:
                return source.read()
        except FileNotFoundError:
            raise FileNotFoundError(self.uri_of(relative)) from None
        except OSError as exc:
            # object stores report a missing key as a plain OSError
            if not self.exists(relative):
                raise FileNotFoundError(self.uri_of(relative)) from None
            raise self.error(relative, "read", exc) from None

    def read_text(self, relative: str, default: Any = _REQUIRED) -> Any:
        try:
            data = self.read_bytes(relative)
        except FileNotFoundError:
            if default is _REQUIRED:
                raise
            return default
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise self.error(relative, "read text", exc) from None

    def read_json(self, relative: str, default: Any = _REQUIRED) -> Any:
        """The parsed file; ``default`` when it is absent (FileNotFoundError without one)."""
        text = self.read_text(relative, _REQUIRED if default is _REQUIRED else None)
        if text is None:
            return default
        try:
            return json.loads(text)
        except ValueError as exc:
            raise self.error(relative, "parse JSON", exc) from None

    def exists(self, relative: str) -> bool:
        return self._info(relative).type != pafs.FileType.NotFound

    def is_dir(self, relative: str = "") -> bool:
        return self._info(relative).type == pafs.FileType.Directory

    def _info(self, relative: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path(relative))
        except OSError as exc:
            raise self.error(relative, "look up", exc) from None

    def list(self, relative_dir: str, suffix: str = "") -> list[str]:
        """The files directly in ``relative_dir`` ending with ``suffix``, as sorted relative
        paths; none if the directory is absent. Temporary (dot) files are never listed."""
        selector = pafs.FileSelector(self.path(relative_dir), allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise self.error(relative_dir, "list", exc) from None
        names = (posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)
        return sorted(f"{relative_dir}/{n}" if relative_dir else n for n in names
                      if n.endswith(suffix) and not n.startswith("."))
