"""The control channel between ``sweep pause|resume|migrate`` and a driver, live or stopped.

Requests are small JSON files in ``RUN_DIR/control/``: a live driver takes them on its next tick
(about a second); a stopped sweep finds them when it is resumed. Which trials are paused is kept
in ``RUN_DIR/paused.json``; ``RUN_DIR/driver.json`` says which process drives the sweep now, and
``RUN_DIR/live.json`` what its unfinished trials are doing (rewritten about once a second).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any, Optional, Union

from runner.rundir import RunDir, RunDirError

ACTIONS = ("pause", "resume", "migrate")
log = logging.getLogger("sweep")


class ControlChannel:
    def __init__(self, run_dir: Union[str, RunDir]) -> None:
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self._min_interval: Optional[float] = None
        self._last_take = float("-inf")

    def request(self, action: str, trial: int, **args: Any) -> None:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        self.run.write_json(f"control/{name}", {"action": action, "trial": trial, **args})

    def take(self) -> list[dict]:
        """Every pending request, oldest first; each is removed as it is taken."""
        if self._min_interval is None:
            # listing a local dir costs microseconds, an object store a request: look less often
            self._min_interval = 0.0 if self.run.fs.type_name == "local" else 1.0
        now = time.monotonic()
        if now - self._last_take < self._min_interval:
            return []
        self._last_take = now
        taken = []
        for relative in self.run.list("control", ".json"):
            try:
                taken.append(self.run.read_json(relative))
            except FileNotFoundError:
                continue
            except RunDirError as exc:  # one unreadable request must not stop the sweep
                log.warning("control request ignored: %s", exc)
            self.run.delete(relative)
        return taken

    def pending(self) -> list[dict]:
        """The requests no driver has taken yet (left as they are)."""
        return [r for r in (self.run.read_json(p, None) for p in self.run.list("control", ".json"))
                if r is not None]

    def paused(self) -> set[int]:
        return set(self.run.read_json("paused.json", []))

    def set_paused(self, trials: set[int]) -> None:
        self.run.write_json("paused.json", sorted(trials))

    def claim_driver(self, driver_id: str) -> None:
        self.run.write_json("driver.json", {"pid": os.getpid(), "host": socket.gethostname(),
                                            "since": time.time(), "id": driver_id})

    def dead_driver(self) -> str | None:
        """The id of a driver that held this run dir on this host and died without releasing it."""
        owner = self.run.read_json("driver.json", None)
        if owner and owner.get("host") == socket.gethostname() and not self.driver_alive():
            return owner.get("id")
        return None

    def release_driver(self) -> None:
        self.run.delete("driver.json")

    def driver_alive(self) -> bool:
        """Whether a driver process on this host still runs this sweep (a killed one does not)."""
        owner = self.run.read_json("driver.json", None)
        if not owner or owner.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(owner["pid"]), 0)
        except (ProcessLookupError, PermissionError, ValueError, KeyError, TypeError):
            return False
        return True

    def write_live(self, status: dict) -> None:
        """The live driver's view of its unfinished trials, for ``sweep status`` and ``show``."""
        self.run.write_json("live.json", status)

    def live(self) -> Optional[dict]:
        """What ``write_live`` wrote last, or None (no driver has written one, or it exited)."""
        return self.run.read_json("live.json", None)

    def clear_live(self) -> None:
        self.run.delete("live.json")
