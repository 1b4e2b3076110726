"""The control channel between ``sweep pause|resume|migrate`` and a driver, live or stopped.

Requests are small JSON files in ``RUN_DIR/control/``: a live driver takes them on its next tick
(about a second); a stopped sweep finds them when it is resumed. Which trials are paused is kept
in ``RUN_DIR/paused.json``; ``RUN_DIR/driver.json`` says which process drives the sweep now.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from runner.records import filesystem

ACTIONS = ("pause", "resume", "migrate")


class ControlChannel:
    def __init__(self, run_dir: str) -> None:
        self.fs, self.root = filesystem(run_dir)
        # listing a local dir costs microseconds, an object store a request: look less often there
        self.min_interval = 0.0 if self.fs.type_name == "local" else 1.0
        self._last_take = float("-inf")

    def _write(self, path: str, data: Any) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        temp = f"{path}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(temp) as sink:
            sink.write(json.dumps(data).encode())
        self.fs.move(temp, path)

    def _read(self, path: str, default: Any) -> Any:
        try:
            with self.fs.open_input_stream(path) as source:
                return json.loads(source.read())
        except (FileNotFoundError, OSError, ValueError):
            return default

    def request(self, action: str, trial: int, **args: Any) -> None:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        self._write(f"{self.root}/control/{name}", {"action": action, "trial": trial, **args})

    def take(self) -> list[dict]:
        """Every pending request, oldest first; each is removed as it is taken."""
        from pyarrow.fs import FileSelector

        now = time.monotonic()
        if now - self._last_take < self.min_interval:
            return []
        self._last_take = now
        selector = FileSelector(f"{self.root}/control", allow_not_found=True)
        paths = sorted(i.path for i in self.fs.get_file_info(selector) if i.path.endswith(".json"))
        taken = []
        for path in paths:
            request = self._read(path, None)
            self.fs.delete_file(path)
            if request is not None:
                taken.append(request)
        return taken

    def paused(self) -> set[int]:
        return set(self._read(f"{self.root}/paused.json", []))

    def set_paused(self, trials: set[int]) -> None:
        self._write(f"{self.root}/paused.json", sorted(trials))

    def claim_driver(self, driver_id: str) -> None:
        self._write(f"{self.root}/driver.json", {"pid": os.getpid(), "host": socket.gethostname(),
                                                 "since": time.time(), "id": driver_id})

    def dead_driver(self) -> str | None:
        """The id of a driver that held this run dir on this host and died without releasing it."""
        owner = self._read(f"{self.root}/driver.json", None)
        if owner and owner.get("host") == socket.gethostname() and not self.driver_alive():
            return owner.get("id")
        return None

    def release_driver(self) -> None:
        try:
            self.fs.delete_file(f"{self.root}/driver.json")
        except (FileNotFoundError, OSError):
            pass

    def driver_alive(self) -> bool:
        """Whether a driver process on this host still runs this sweep (a killed one does not)."""
        owner = self._read(f"{self.root}/driver.json", None)
        if not owner or owner.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(owner["pid"]), 0)
        except (ProcessLookupError, PermissionError, ValueError):
            return False
        return True
