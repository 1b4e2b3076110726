"""PBT as a strategy: synchronous generations whose outcome is a function of the seed alone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import yaml

import schedules
from runner.config import parse_config
from runner.driver import Sweep
from runner.records import RunRecords
from tests.held_trainables import kill_the_driver_when_held
from tests.test_preemption import Signaller, _data, _outcome

pytestmark = pytest.mark.usefixtures("ray_local")


def _pbt_data(run_dir, trainable="examples.digits_torch:train", **search):
    data = _data(run_dir, trainable,
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


def _run(run_dir, on_event=None, **overrides):
    data = {**_pbt_data(run_dir), **overrides}
    Sweep(parse_config(data, "pbt.yaml"), on_event=on_event).run()
    return _outcome(run_dir), _lineage(run_dir)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pbt") / "run"
    return run_dir, _run(run_dir)


def test_a_pbt_sweep_is_a_function_of_its_seed_and_its_schedules_say_what_members_followed(
        baseline, tmp_path):
    run_dir, ((history, applied, states, trials), lineage) = baseline
    assert sorted(trials) == [0, 1, 2, 3] and all(s[0] == "COMPLETE" for s in states.values())
    assert [(m, g, s) for m, g, s, _, _ in lineage] == [  # the bottom half at each generation
        (m, g, s) for m, g, s, _, _ in lineage if s == 20 * (g + 1)] and len(lineage) == 4
    for member, _, step, donor, _ in lineage:
        assert donor != member
    # every applied value is the value of the schedule in force: the initial one, then after
    # each exploit the new effective one (the donor's past, the explored future)
    rows = RunRecords(str(run_dir)).read("lineage").to_pylist()
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
    # the strategy's saved state keeps the plan of the generation in hand, not all of them
    from runner.driver import STRATEGY_STATE_KEY
    from runner.study import open_study, study_system_attrs

    saved = study_system_attrs(open_study(parse_config(_pbt_data(run_dir))))[STRATEGY_STATE_KEY]
    assert len(saved["state"]["plans"]) <= 1 and saved["state"]["generation"] == 2
    # the same seed again: identical values, lineage and applied hyperparameters
    (history2, applied2, states2, _), lineage2 = _run(tmp_path / "again")
    assert (states2, lineage2, applied2, history2) == (states, lineage, applied, history)


def _same_as(baseline, outcome, lineage):
    """Values, lineage, applied hyperparameters and metrics equal the uninterrupted run's
    (atol=0)."""
    (history, applied, states, _), expected = baseline[1]
    assert (outcome[2], lineage, outcome[1], outcome[0]) == (states, expected, applied, history)


def test_pbt_is_unchanged_by_kill_9_of_its_workers(baseline, tmp_path):
    killer = Signaller([30, 50], signal.SIGKILL)  # between checkpoints, in two generations
    outcome, lineage = _run(tmp_path / "run", on_event=killer)
    assert killer.sent == [30, 50] and sum(t["lost"] for t in outcome[3].values()) == 2
    _same_as(baseline, outcome, lineage)


def test_pbt_is_unchanged_by_kill_9_of_a_worker_as_it_pauses_for_the_generation(baseline,
                                                                                tmp_path):
    """Killed as it saves the checkpoint its pause lands on (background saves, one kept).
    Before: the pause landed on the previous checkpoint, the generation never turned, and the
    strategy ended with the members paused."""
    pids, targets, killed = {}, [(1, 20), (2, 40)], []

    def kill_at_the_pause(kind, info):  # the worker of the trial whose report the pause answers
        if kind == "placed":
            pids[info["number"]] = info["pid"]
        elif kind == "report" and (info["number"], info["step"]) in targets:
            os.kill(pids[info["number"]], signal.SIGKILL)
            targets.remove((info["number"], info["step"]))
            killed.append((info["number"], info["step"]))

    outcome, lineage = _run(tmp_path / "run", on_event=kill_at_the_pause,
                            checkpoint={"async_save": True, "keep_last": 1})
    assert killed == [(1, 20), (2, 40)] and sum(t["lost"] for t in outcome[3].values()) == 2
    _same_as(baseline, outcome, lineage)


def test_a_member_whose_worker_dies_at_every_pause_fails_alone_and_the_population_goes_on(
        tmp_path):
    """Before: the failed member stayed held, and the driver crashed releasing it."""
    pids = {}

    def kill_member_1_at_its_pause(kind, info):
        if kind == "placed":
            pids[info["number"]] = info["pid"]
        elif kind == "report" and info["number"] == 1 and info["step"] == 20:
            os.kill(pids[1], signal.SIGKILL)

    (_, _, states, trials), lineage = _run(tmp_path / "run", on_event=kill_member_1_at_its_pause,
                                           max_restarts=1)
    assert states[1][0] == "FAIL" and "worker lost 2 times" in trials[1]["error"]
    assert [s[0] for n, s in sorted(states.items()) if n != 1] == ["COMPLETE"] * 3
    assert lineage and all(member != 1 for member, *_ in lineage)


@pytest.mark.timeout(300)
def test_pbt_is_unchanged_by_a_driver_killed_mid_generation_and_resumed(baseline, tmp_path):
    run_dir, path = tmp_path / "run", tmp_path / "pbt.yaml"
    path.write_text(yaml.safe_dump(_pbt_data(run_dir, "tests.held_trainables:"
                                                      "digits_held_once_after_40")))
    kill_the_driver_when_held(path, tmp_path)  # trial 0 checkpointed at 40, the rest anywhere
    result = subprocess.run([sys.executable, "-m", "runner.cli", "resume", str(run_dir)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    outcome = _outcome(run_dir)
    assert "driver lost" in [e["reason"] for e in json.loads(outcome[3][0]["restart_log"])]
    _same_as(baseline, outcome, _lineage(run_dir))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("key", ["exploits", "seed_trial"])
def test_pbt_is_unchanged_by_a_driver_killed_halfway_through_an_exploit(baseline, tmp_path, key):
    """kill -9 between the writes of an exploit (its checkpoint copied and its record written,
    the member's schedules not yet): the resumed driver redoes it, once."""
    run_dir, path = tmp_path / "run", tmp_path / "pbt.yaml"
    path.write_text(yaml.safe_dump(_pbt_data(run_dir)))
    _killed_and_resumed(path, run_dir, key, f"killed after {key}")
    _same_as(baseline, _outcome(run_dir), _lineage(run_dir))


@pytest.mark.timeout(300)
def test_pbt_keeps_the_reports_of_a_member_whose_driver_died_as_its_checkpoint_landed(
        baseline, tmp_path):
    """kill -9 once an exploited member's checkpoint at the generation step is durable, before
    the driver records the reports since its previous checkpoint: only that checkpoint holds
    them, and the resumed driver exploits the member without running it again (which would
    replay them). Before: the member's history and applied rows lost those steps."""
    member = next(m for m, _, step, *_ in baseline[1][1] if step == 40)
    run_dir, path = tmp_path / "run", tmp_path / "pbt.yaml"
    path.write_text(yaml.safe_dump(_pbt_data(run_dir)))
    _killed_and_resumed(path, run_dir, f"checkpoint:{member}:40",
                        f"killed at the checkpoint of trial {member} at step 40")
    outcome = _outcome(run_dir)
    assert any(e["reason"] == "driver lost" and e["from_step"] == 40  # killed as it landed
               for e in json.loads(outcome[3][member]["restart_log"]))
    _same_as(baseline, outcome, _lineage(run_dir))


def _killed_and_resumed(path, run_dir, when, said):
    """``sweep run path`` whose driver kills itself -9 at ``when``, then ``sweep resume``."""
    killed = subprocess.run([sys.executable, "-m", "tests.killed_driver", when, "run", str(path)],
                            cwd=path.parent, capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL and said in killed.stdout, killed.stdout[-2000:]
    result = subprocess.run([sys.executable, "-m", "runner.cli", "resume", str(run_dir)],
                            cwd=path.parent, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_pbt_with_one_slot_runs_every_generation_the_same(baseline, tmp_path):
    """Before: with max_concurrent 1 nothing ran while the generation turned, and it ended."""
    outcome, lineage = _run(tmp_path / "run", max_concurrent=1)
    _same_as(baseline, outcome, lineage)


def test_a_member_paused_by_hand_stops_the_generation_until_it_is_resumed(baseline, tmp_path,
                                                                          monkeypatch, capsys):
    """The strategy's pauses are its own (resume refused); a user's pause of a member, running
    or held, holds the generation: the sweep stops resumable, and resuming that member goes on
    unchanged."""
    from runner.cli import main

    run_dir, events = tmp_path / "run", []
    (tmp_path / "run").mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(_pbt_data(run_dir)))
    monkeypatch.chdir(tmp_path)

    def pause_member_1(kind, info):
        events.append((kind, info))
        if kind == "report" and info["number"] == 1 and info["step"] == 10:
            assert main(["pause", str(run_dir), "1"]) == 0

    _run(run_dir, on_event=pause_member_1)
    notices = [i["message"] for k, i in events if k == "notice"]
    assert notices[-1] == (f"search.strategy pbt waits for paused trial 1; the sweep stops "
                           f"here (sweep resume {run_dir} continues it)")
    capsys.readouterr()
    assert main(["resume", str(run_dir), "0"]) == 2
    assert "trial 0 is paused by the search strategy, which resumes it itself" in \
        capsys.readouterr().err
    assert main(["pause", str(run_dir), "2"]) == 0  # held by the strategy, now by the user too
    assert main(["resume", str(run_dir), "1"]) == 0
    out = capsys.readouterr().err
    assert "trial 2: the strategy resumes it, but it was paused by request: it stays paused" in out
    assert "search.strategy pbt waits for paused trial 2; the sweep stops here" in out, out
    assert main(["resume", str(run_dir), "2"]) == 0
    _same_as(baseline, _outcome(run_dir), _lineage(run_dir))


def test_a_trainable_that_declares_no_state_is_refused_and_once_fixed_resumes_the_same(
        tmp_path, monkeypatch):
    """Before: its members 'paused' with nothing to go on from and the sweep ended, silent; then,
    once refused, each resume of the fixed trainable moved the members one generation on,
    out of step, and the population ended without a single exploit."""
    from runner.cli import main

    fixed = tmp_path / "fixed"

    def data(run_dir):
        return {**_pbt_data(run_dir, "tests.trainables:stateless_until_fixed"),
                "objective": {"metric": "loss"}, "params": {"fixed": str(fixed)}}

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data(run_dir)))
    sweep = Sweep(parse_config(data(run_dir), "pbt.yaml"))
    sweep.run()
    assert re.fullmatch(r"search.strategy pbt: it paused trial \d at step 20, but the trainable "
                        r"tests.trainables:stateless_until_fixed declares no state \(ctx.track / "
                        r"ctx.track_pytree\) to go on from; declare it to use it",
                        sweep.abort_reason)
    fixed.touch()  # the user declares the state, then resumes once
    monkeypatch.chdir(tmp_path)
    assert main(["resume", str(run_dir)]) == 0
    straight = tmp_path / "straight"
    Sweep(parse_config(data(straight), "pbt.yaml")).run()
    assert len(_lineage(straight)) == 4  # two exploits in each of two generations
    assert (_outcome(run_dir)[2], _lineage(run_dir)) == (_outcome(straight)[2], _lineage(straight))


def test_search_timeout_says_when_it_stops_the_population(tmp_path):
    events = []
    data = _pbt_data(tmp_path / "run")
    data["search"]["timeout"] = 1e-6  # passed before the first member could start
    summary = Sweep(parse_config(data, "pbt.yaml"),
                    on_event=lambda kind, info: events.append((kind, info))).run()
    assert ("notice", {"message": f"search.timeout (1e-06 s) reached: nothing starts or resumes "
                                  f"from now on; running trials go on until they finish or pause "
                                  f"(sweep resume {tmp_path / 'run'} continues the sweep)"}) in events
    assert summary.counts == {} and summary.paused == []


def test_sweep_replay_trains_a_member_from_scratch_on_its_effective_schedule(baseline, tmp_path,
                                                                            monkeypatch, capsys):
    """The replay follows the member's weights lineage: the donors' schedules until each
    exploit, then the explored ones; with the lineage's seed it is the same run, bit for bit."""
    from runner.cli import main

    run_dir, ((_, applied, states, trials), lineage) = baseline
    (run_dir / "config.yaml").write_text(yaml.safe_dump(_pbt_data(run_dir)))
    member, last = max(((m, s) for m, _, s, _, _ in lineage), key=lambda e: (e[1], e[0]))
    monkeypatch.chdir(tmp_path)
    assert main(["replay", str(run_dir), str(member), "--out", "replay.yaml", "--run"]) == 0
    assert "replay.yaml: trial" in capsys.readouterr().out
    assert main(["replay", str(run_dir), str(member), "--out", "replay.yaml"]) == 2  # no overwrite
    assert main(["replay", str(run_dir), str(member), "--out", "nodir/r.yaml"]) == 2
    assert "--out nodir/r.yaml: no directory 'nodir'" in capsys.readouterr().err
    assert main(["show", str(run_dir), str(member)]) == 0
    assert f"at step {last} (generation {last // 20 - 1})" in capsys.readouterr().out
    replay_dir = run_dir / "replays" / f"trial-{member}"  # its own, beside the run it replays
    _, replayed, replay_states, _ = _outcome(replay_dir)
    spec = {n: schedules.from_spec(s) for n, s in json.loads(trials[member]["schedules"]).items()}
    assert all(spec[name](step) == value for _, step, name, value in replayed)
    assert [r[1:] for r in replayed if r[1] > last] == \
        [r[1:] for r in applied if r[0] == member and r[1] > last]
    assert replay_states[0] == states[member]  # the same weights lineage, bit for bit


@pytest.mark.parametrize("change, message", [
    ({"search": {"interval_steps": 25}},
     "search.interval_steps: expected a multiple of budget.report_every (10), got 25"),
    ({"pruner": {"kind": "median"}}, "pruner.kind: expected none with search.strategy pbt"),
    ({"search": {"population": 1}}, "search.population: Input should be greater than or equal to 2"),
    ({"search": {"interval_steps": 60}},
     "search.interval_steps: expected fewer than budget.steps (60), got 60"),
    ({"search": {"perturb_factors": [0.8, -1.2]}},
     "search.perturb_factors.1: Input should be greater than 0"),
    ({"hyperparams": {"learning_rate": {"kind": "constant", "value": 0.01}}},
     "hyperparams: expected at least one distribution (loguniform, uniform, int, choice) for "
     "search.strategy pbt to explore (params are the donor's, never explored)"),
    ({"search": {"perturb_factor": [0.8]}},
     "search.perturb_factor: unknown key (did you mean 'perturb_factors'?)"),
    ({"search": {"interval_step": 20, "interval_steps": None}},  # the required key misspelled
     "search.interval_step: unknown key (did you mean 'interval_steps'?)"),
    ({"search": {"n_trials": 20}}, "search.n_trials: not used with search.strategy pbt (the "
                                   "population is the number of trials: search.population)"),
])
def test_pbt_config_mistakes_are_one_line(tmp_path, change, message):
    from runner.config import ConfigError

    data = _pbt_data(tmp_path / "run")
    data["search"].update(change.get("search", {}))
    data["search"] = {k: v for k, v in data["search"].items() if v is not None}  # None: absent
    data.update({k: v for k, v in change.items() if k != "search"})
    with pytest.raises(ConfigError, match="^" + re.escape(f"pbt.yaml: {message}")):
        parse_config(data, "pbt.yaml")


def test_the_population_plot_shows_every_member_and_the_exploits(baseline, tmp_path):
    from runner.plots import plot_run
    from tests.test_plots import _shown

    run_dir, (_, lineage) = baseline
    (run_dir / "config.yaml").write_text(yaml.safe_dump(_pbt_data(run_dir)))
    plots = plot_run(str(run_dir), str(tmp_path))
    assert sorted(os.path.basename(p) for p in plots.paths) == [
        "curves.png", "history.png", "population.png", "schedules.png"]
    assert plots.notes == ["no parameter importances for PBT: a member's values change at each "
                           "exploit, so the sampled ones it started from explain little"]
    shown = _shown(next(p for p in plots.paths if p.endswith("population.png")))
    first = shown[0]
    assert first["title"] == f"population: applied hyperparameters, {len(lineage)} exploits"
    assert [s["label"] for s in first["series"]] == \
        [f"member {n}" for n in range(4)] + ["exploit"]
    assert first["series"][-1]["points"] == len(lineage)
    assert [a["ylabel"] for a in shown] == ["learning_rate", "weight_decay"]
