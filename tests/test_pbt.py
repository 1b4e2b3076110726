"""PBT as a strategy: synchronous generations whose outcome is a function of the seed alone."""

from __future__ import annotations

import json

import pytest

import schedules
from runner.config import parse_config
from runner.driver import Sweep
from runner.records import RunRecords
from tests.test_preemption import _data, _outcome

pytestmark = pytest.mark.usefixtures("ray_local")


def _pbt_data(run_dir, **search):
    data = _data(run_dir, "examples.digits_torch:train",
                 budget={"steps": 60, "report_every": 10, "checkpoint_every": 20},
                 search={"strategy": "pbt", "population": 4, "interval_steps": 20, "seed": 3,
                         "quantile": 0.5, **search},
                 hyperparams={"learning_rate": {
                     "kind": "wsd", "peak_value": {"loguniform": [1e-3, 3e-2]},
                     "warmup_steps": 5, "stable_steps": 40, "decay_steps": 15},
                     "weight_decay": {"loguniform": [1e-5, 1e-2]}},
                 max_concurrent=2)
    del data["pruner"]
    return data


def _lineage(run_dir):
    return sorted((r["member"], r["generation"], r["step"], r["donor"], r["new"])
                  for r in RunRecords(str(run_dir)).read("lineage").to_pylist())


def _run(run_dir, on_event=None):
    Sweep(parse_config(_pbt_data(run_dir), "pbt.yaml"), on_event=on_event).run()
    return _outcome(run_dir), _lineage(run_dir)


def test_a_pbt_sweep_is_a_function_of_its_seed_and_its_schedules_say_what_members_followed(
        tmp_path):
    (history, applied, states, trials), lineage = _run(tmp_path / "a")
    assert sorted(trials) == [0, 1, 2, 3] and all(s[0] == "COMPLETE" for s in states.values())
    assert [(m, g, s) for m, g, s, _, _ in lineage] == [  # the bottom half at each generation
        (m, g, s) for m, g, s, _, _ in lineage if s == 20 * (g + 1)] and len(lineage) == 4
    for member, _, step, donor, _ in lineage:
        assert donor != member
    # every applied value is the value of the schedule in force: the initial one, then after
    # each exploit the new effective one (the donor's past, the explored future)
    rows = RunRecords(str(tmp_path / "a")).read("lineage").to_pylist()
    for trial, step, name, value in applied:
        exploits = sorted((r for r in rows if r["member"] == trial), key=lambda r: r["step"])
        before = [r for r in exploits if r["step"] < step]
        spec = json.loads(before[-1]["new"] if before else exploits[0]["old"] if exploits
                          else trials[trial]["schedules"])[name]
        assert schedules.from_spec(spec)(step) == value  # what the next update uses
    for member in {r["member"] for r in rows}:  # the last exploit's schedule is the record
        last = max((r for r in rows if r["member"] == member), key=lambda r: r["step"])
        assert json.loads(last["new"]) == json.loads(trials[member]["schedules"])
    exploited = {m for m, *_ in lineage}
    for member in exploited:
        spec = json.loads(trials[member]["schedules"])
        assert any(s["kind"] == "join" and s.get("absolute") for s in spec.values())
    # the same seed again: identical values, lineage and applied hyperparameters
    (history2, applied2, states2, _), lineage2 = _run(tmp_path / "b")
    assert (states2, lineage2, applied2, history2) == (states, lineage, applied, history)
