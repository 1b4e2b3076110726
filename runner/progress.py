"""Live progress: a rich table on a terminal, plain log lines otherwise."""

from __future__ import annotations

import time
from typing import Optional

from rich.console import Console
from rich.live import Live
from rich.table import Table


_LINES = {
    "adopted": "trial {number} picked up from the previous driver",
    "adopted_paused": "trial {number} stays paused (sweep resume RUN_DIR {number} continues it)",
    "resumed": "trial {number}: resume requested",
    "paused": "trial {number} paused; it resumes from step {step}",
    "paused_by_strategy": "trial {number} paused at step {step} for the strategy",
    "exploited": "trial {number} exploits trial {donor}: it goes on from trial {donor}'s "
                 "checkpoint of step {step} with explored hyperparameters",
    "superseded": "trial {number} is run by another worker now; this one stopped ({reason})",
    "branched": "trial {number}: the cooldown branch of trial {parent} from step {step} to "
                "rung {rung}",
    "notice": "{message}",
    "stopping": "stopping: checkpointing {running} (Ctrl-C again to quit at once; the sweep "
                "stays resumable either way)",
    "aborting": "stopping: the first {trials} trials all failed with: {error}",
}
_REQUEUED = {  # a lost worker may have saved a checkpoint the driver had not heard of yet
    "lost": "trial {number} lost its worker ({error}); resumes from its last checkpoint (step "
            "{from_step} or later)",
    "retry": "trial {number} raised {error}; retrying from its last checkpoint (step "
             "{from_step} or later)",
    "migrate": "trial {number} migrating from step {from_step}",
    "handover": "trial {number} handing over (its worker is going away) at step {from_step}",
}
# shown beside the table
_ALWAYS = {"notice", "stopping", "aborting", "superseded", "requeued", "exploited"}


class Progress:
    """Receives the driver's events (``on_event``) and shows them."""

    def __init__(self, n_trials: Optional[int], objective: str, direction: str,
                 console: Optional[Console] = None) -> None:
        self.console = console or Console(stderr=True)
        self.live_mode = self.console.is_terminal
        self.n_trials = n_trials
        self.objective = objective
        self.sign = 1 if direction == "minimize" else -1
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "PAUSED": 0}
        self.running: dict[int, dict] = {}
        self.branches: dict[int, dict] = {}  # cooldown branches: they score trials, not results
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
        number = info.get("number")
        if kind == "forked" and "rung" in info:
            kind = "branched"
        if kind in ("branched", "adopted") and "rung" in info:
            self.branches[number] = info
        line = _LINES.get("adopted_paused" if kind == "adopted" and info.get("paused") else
                          f"{kind}_by_strategy" if info.get("by_strategy") else kind)
        if kind == "started":
            self.running[number] = {"step": info["step"], "lr": None}
            line = ("trial {number} resumed at step {step}" if info["resumed"]
                    else "trial {number} started")
        elif kind == "report":
            row = self.running.setdefault(number, {"step": 0, "lr": None})
            row["step"] = info["step"]
            row["lr"] = info["hyperparams"].get("learning_rate")
            row["metric"] = info["metrics"].get(self.objective)
        elif kind in ("requeued", "paused", "stopped", "superseded"):
            self.running.pop(number, None)
            if kind == "requeued":
                line = _REQUEUED[info["why"]]
            if kind == "paused":
                self.counts["PAUSED"] += 1
        elif kind == "finished":
            self.running.pop(number, None)
            self._finished(number, info)
        if line and (self.live is None or kind in _ALWAYS):
            self.console.print(line.format(**info), highlight=False, markup=False, soft_wrap=True)
            self.console.file.flush()  # a log file sees each line at once (and after a kill -9)
        if self.live is not None:
            self.live.update(self._table())

    def _finished(self, number: int, info: dict) -> None:
        state = info["state"]
        value = info["values"].get(self.objective)
        if number in self.branches:
            if self.live is None:
                parent, rung = self.branches[number]["parent"], self.branches[number]["rung"]
                line = (f"trial {parent} scores {value:.6g} at rung {rung} (its branch, trial "
                        f"{number})" if value is not None else
                        f"trial {parent}: its branch to rung {rung}, trial {number}, ended "
                        f"{state} ({info['error']}): trial {parent} is pruned there")
                self.console.print(line, highlight=False, markup=False, soft_wrap=True)
                self.console.file.flush()
            return
        self.counts[state] = self.counts.get(state, 0) + 1
        if state == "COMPLETE" and value is not None:
            if self.best is None or self.sign * value < self.sign * self.best[0]:
                self.best = (value, number)
        if self.live is None:
            shown = f" {self.objective}={value:.6g}" if value is not None else ""
            self.console.print(f"trial {number} {state}{shown} {info['error']}".rstrip(),
                               highlight=False, markup=False, soft_wrap=True)
            self.console.file.flush()

    def _eta(self) -> str:
        done = sum(self.counts[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
        if not done or self.n_trials is None:  # a strategy that decides its own end
            return "-"
        elapsed = time.monotonic() - self.started
        return f"{elapsed / done * max(0, self.n_trials - done):.0f}s"

    def _table(self) -> Table:
        best = f"{self.best[0]:.6g} (trial {self.best[1]})" if self.best else "-"
        title = (f"running {len(self.running)}  completed {self.counts['COMPLETE']}  "
                 f"pruned {self.counts['PRUNED']}  failed {self.counts['FAIL']}  "
                 f"{'' if self.n_trials is None else f'of {self.n_trials}'}   best {self.objective} {best}   ETA {self._eta()}")
        table = Table(title=title, title_justify="left")
        for column in ("trial", "step", self.objective, "learning_rate"):
            table.add_column(column, justify="right")
        for number, row in sorted(self.running.items()):
            metric = row.get("metric")
            table.add_row(str(number), str(row["step"]),
                          "-" if metric is None else f"{metric:.5g}",
                          "-" if row["lr"] is None else f"{row['lr']:.3e}")
        return table
