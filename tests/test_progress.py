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


def test_a_cooldown_branch_scores_its_trunk_and_is_no_trial_of_the_counts():
    lines = _lines([("forked", {"number": 3, "parent": 0, "step": 8, "rung": 10}),
                    ("adopted", {"number": 4, "paused": False, "parent": 1, "rung": 10}),
                    ("finished", {"number": 3, "state": "COMPLETE", "values": {"loss": 1.5},
                                  "error": ""}),
                    ("finished", {"number": 4, "state": "FAIL", "values": {},
                                  "error": "worker lost"})])
    assert lines == ["trial 3: the cooldown branch of trial 0 from step 8 to rung 10",
                     "trial 4 picked up from the previous driver",
                     "trial 0 scores 1.5 at rung 10 (its branch, trial 3)",
                     "trial 1: its branch to rung 10, trial 4, ended FAIL (worker lost): trial 1 "
                     "is pruned there"]
