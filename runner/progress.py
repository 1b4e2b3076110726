"""Live progress: a rich table on a terminal, plain log lines otherwise."""

from __future__ import annotations

import time
from typing import Optional

from rich.console import Console
from rich.live import Live
from rich.table import Table


class Progress:
    """Receives the driver's events (``on_event``) and shows them."""

    def __init__(self, n_trials: int, objective: str, direction: str,
                 console: Optional[Console] = None) -> None:
        self.console = console or Console(stderr=True)
        self.live_mode = self.console.is_terminal
        self.n_trials = n_trials
        self.objective = objective
        self.sign = 1 if direction == "minimize" else -1
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "PAUSED": 0}
        self.running: dict[int, dict] = {}
        self.best: Optional[tuple[float, int]] = None
        self.started = time.monotonic()
        self.live: Optional[Live] = None

    def __enter__(self) -> "Progress":
        if self.live_mode:
            self.live = Live(self._table(), console=self.console, refresh_per_second=4,
                             transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(*exc)

    def __call__(self, kind: str, info: dict) -> None:
        if kind in ("started", "resumed"):
            self.running[info["number"]] = {"step": 0, "lr": None}
            if not self.live_mode:
                self.console.print(f"trial {info['number']} {kind}", highlight=False)
        elif kind == "report":
            row = self.running.setdefault(info["number"], {"step": 0, "lr": None})
            row["step"] = info["step"]
            row["lr"] = info["hyperparams"].get("learning_rate")
            row["metric"] = info["metrics"].get(self.objective)
        elif kind == "restarted":
            self.console.print(f"trial {info['number']} lost its worker; restarting from step "
                               f"{info['from_step']}", highlight=False)
        elif kind == "superseded":
            self.running.pop(info["number"], None)
            self.console.print(f"trial {info['number']} is run by another worker now; this one "
                               f"stopped ({info['reason']})", highlight=False)
        elif kind == "finished":
            self.running.pop(info["number"], None)
            self.counts[info["state"]] = self.counts.get(info["state"], 0) + 1
            event = info["event"]
            if info["state"] == "COMPLETE" and self.objective in event.get("values", {}):
                value = event["values"][self.objective]
                if self.best is None or self.sign * value < self.sign * self.best[0]:
                    self.best = (value, info["number"])
            if not self.live_mode:
                detail = event.get("error") or ""
                value = event.get("values", {}).get(self.objective)
                shown = f" {self.objective}={value:.6g}" if value is not None else ""
                self.console.print(f"trial {info['number']} {info['state']}{shown} {detail}".rstrip(),
                                   highlight=False)
        if self.live is not None:
            self.live.update(self._table())

    def _eta(self) -> str:
        done = sum(self.counts[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
        if not done:
            return "-"
        elapsed = time.monotonic() - self.started
        return f"{elapsed / done * max(0, self.n_trials - done):.0f}s"

    def _table(self) -> Table:
        best = f"{self.best[0]:.6g} (trial {self.best[1]})" if self.best else "-"
        title = (f"running {len(self.running)}  completed {self.counts['COMPLETE']}  "
                 f"pruned {self.counts['PRUNED']}  failed {self.counts['FAIL']}  "
                 f"of {self.n_trials}   best {self.objective} {best}   ETA {self._eta()}")
        table = Table(title=title, title_justify="left")
        for column in ("trial", "step", self.objective, "learning_rate"):
            table.add_column(column, justify="right")
        for number, row in sorted(self.running.items()):
            metric = row.get("metric")
            table.add_row(str(number), str(row["step"]),
                          "-" if metric is None else f"{metric:.5g}",
                          "-" if row["lr"] is None else f"{row['lr']:.3e}")
        return table
