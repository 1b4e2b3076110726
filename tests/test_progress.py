"""What the user reads while a sweep runs (plain lines when not on a terminal): the right words."""

from __future__ import annotations

import io

from rich.console import Console

from runner.progress import Progress


def _lines(events) -> list[str]:
    out = io.StringIO()
    with Progress(4, "loss", "minimize", console=Console(file=out, width=200)) as progress:
        for kind, info in events:
            progress(kind, info)
    return out.getvalue().splitlines()


def test_a_migration_is_not_a_lost_worker_and_names_the_step_it_moves_from():
    """Defect 17: a migrate was logged as 'lost its worker' with the wrong step."""
    lines = _lines([("started", {"number": 0, "step": 0, "resumed": False}),
                    ("requeued", {"number": 0, "why": "migrate", "from_step": 60}),
                    ("started", {"number": 0, "step": 60, "resumed": True})])
    assert lines == ["trial 0 started", "trial 0 migrating from step 60",
                     "trial 0 resumed at step 60"]


def test_a_queued_trial_is_not_said_to_have_started():
    assert _lines([("queued", {"number": 3, "specs": {}, "params": {}})]) == []


def test_a_lost_worker_names_its_error_and_the_finished_line_its_value():
    lines = _lines([("requeued", {"number": 1, "why": "lost", "error": "RayActorError",
                                  "from_step": 40}),
                    ("finished", {"number": 1, "state": "COMPLETE", "values": {"loss": 0.25},
                                  "error": ""})])
    assert lines == ["trial 1 lost its worker (RayActorError); resumes from its last "
                     "checkpoint (step 40 or later)",
                     "trial 1 COMPLETE loss=0.25"]
