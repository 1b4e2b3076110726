"""The strategy seam: a user strategy by import path starts, pauses, resumes and forks trials
through the same lifecycle as Optuna's, and its state outlives the driver."""

from __future__ import annotations

import json
import subprocess
import sys
import typing

import optuna
import pytest
import yaml

from runner.cli import main
from runner.config import ConfigError, load_config, parse_config
from runner.driver import Sweep
from runner.study import PRUNERS, SAMPLERS
from tests.held_trainables import kill_the_driver_when_held
from tests.test_preemption import _data, _outcome

REPECHAGE = "tests.strategies:Repechage"


def _strategy_data(run_dir, trainable="examples.digits_torch:train", **search):
    data = _data(run_dir, trainable, search={"strategy": REPECHAGE, "seed": 0, **search})
    del data["pruner"]
    return data


def _study_state(run_dir):
    study = optuna.load_study(study_name="exact", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal"))))
    return study._storage.get_study_system_attrs(study._study_id)["strategy"]


@pytest.mark.usefixtures("ray_local")
def test_a_user_strategy_pauses_resumes_and_forks_the_best_exactly(tmp_path):
    run_dir = tmp_path / "run"
    events = []
    Sweep(parse_config(_strategy_data(run_dir, pause_at=50), "s.yaml"),
          on_event=lambda kind, info: events.append((kind, info))).run()
    history, _, states, trials = _outcome(run_dir)
    assert sorted(trials) == [0, 1, 2] and all(s[0] == "COMPLETE" for s in states.values())
    best = min((0, 1), key=lambda n: states[n][1])
    assert trials[2]["parent"] == best and trials[2]["parent_step"] == 100
    assert states[2] == states[best]  # the fork kept the schedule: the same run, bit for bit
    after = lambda n: [r[1:] for r in history if r[0] == n and r[1] > 100]  # noqa: E731
    assert after(2) == after(best)
    log = json.loads(trials[0]["restart_log"])  # paused at its report of step 50, exactly
    assert [(e["kind"], e["resumed_at"]) for e in log] == [("pause", 50)]
    order = [(kind, info["number"]) for kind, info in events if kind in ("paused", "finished")]
    assert order[:2] == [("paused", 0), ("finished", 1)]  # trial 1 ran while 0 was paused
    assert _study_state(run_dir) == {"strategy": REPECHAGE, "state": {
        "started": 2, "paused": [0], "resumed": [0], "forked": [best]}}


@pytest.mark.timeout(300)
def test_the_strategy_state_survives_a_driver_kill_and_sweep_resume(tmp_path):
    """Killed while trial 0 runs, the strategy has started one trial: a resumed driver that
    forgot that would start two more; it starts one, then forks once."""
    run_dir = tmp_path / "run"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_strategy_data(run_dir, "tests.held_trainables:"
                                                           "digits_held_after_40")))
    kill_the_driver_when_held(path, tmp_path)
    assert _study_state(run_dir)["state"]["started"] == 1  # what the killed driver had done
    result = subprocess.run([sys.executable, "-m", "runner.cli", "resume", str(run_dir)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    _, _, states, trials = _outcome(run_dir)
    assert sorted(trials) == [0, 1, 2] and trials[2]["parent"] in (0, 1)
    assert json.loads(trials[0]["restart_log"])[0]["reason"] == "driver lost"
    assert states[2] == states[trials[2]["parent"]]
    assert _study_state(run_dir)["state"]["forked"] == [trials[2]["parent"]]


def _cli_run(tmp_path, strategy, capsys):
    path = tmp_path / "s.yaml"
    data = _data(tmp_path / "run", "tests.trainables:quadratic",
                 budget={"steps": 120, "report_every": 10, "checkpoint_every": 20},
                 objective={"metric": "loss"}, search={"strategy": strategy},
                 checkpoint={"keep_last": 10})
    path.write_text(yaml.safe_dump(data))
    code = main(["run", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.usefixtures("ray_local")
def test_a_strategy_that_raises_stops_the_sweep_in_one_line(tmp_path, capsys):
    code, err = _cli_run(tmp_path, "tests.strategies:Raises", capsys)
    details = tmp_path / "run" / "strategy_error.txt"
    assert code == 1 and "Traceback" not in err
    assert (f"sweep: stopped early: search.strategy tests.strategies:Raises: next() raised "
            f"ZeroDivisionError: division by zero in my strategy (details in {details})") in err
    assert "Traceback" in details.read_text() and "my strategy" in details.read_text()


@pytest.mark.usefixtures("ray_local")
def test_a_strategy_that_raises_at_start_names_the_file_and_leaves_no_run_dir(tmp_path, capsys):
    """Before: the message lacked the config file, and the new run dir kept a study journal."""
    code, err = _cli_run(tmp_path, "tests.strategies:RaisesAtStart", capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"sweep: {tmp_path / 's.yaml'}: search.strategy: "
                           f"tests.strategies:RaisesAtStart: __init__() raised ValueError: "
                           f"population must be even")
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("ray_local")
def test_a_strategy_fork_that_changes_the_past_is_refused(tmp_path, capsys):
    code, err = _cli_run(tmp_path, "tests.strategies:ForksAPast", capsys)
    assert code == 1 and "Traceback" not in err
    assert ("next() forked trial 0: hyperparams.learning_rate: the new schedule differs from "
            "trial 0's at step 1, before the fork step 100: the child would not continue its parent's past (fix it") in err
    assert sorted(_outcome(tmp_path / "run")[3]) == [0]  # no child was made


@pytest.mark.parametrize("search, message", [
    ({"strategy": REPECHAGE, "initial": "two"}, "search.initial: Input should be a valid integer"),
    ({"strategy": REPECHAGE, "inital": 2}, "search.inital: unknown key (did you mean 'initial'?)"),
    ({"strategy": "tests.strategies:NotAStrategy"},
     "search.strategy: tests.strategies:NotAStrategy: expected a subclass of "
     "runner.strategy.Strategy"),
    ({"strategy": "tests.nowhere:Thing"}, "search.strategy: tests.nowhere:Thing: No module"),
    ({"strategy": "pbtt"}, "search.strategy: expected optuna, pbt or 'package.module:Class'"),
    ({"n_trails": 3}, "search.n_trails: unknown key (did you mean 'n_trials'?)"),
    ({"sampler": "tpe"}, "search.n_trials: missing required key"),
])
def test_strategy_config_mistakes_name_the_key(tmp_path, search, message):
    path = tmp_path / "s.yaml"
    data = _data(tmp_path / "run", "tests.trainables:quadratic", search=search)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_the_registries_hold_every_name_the_config_accepts():
    from runner.config import Pruner, Search

    assert set(SAMPLERS) == set(typing.get_args(Search.model_fields["sampler"].annotation))
    assert set(PRUNERS) == set(typing.get_args(Pruner.model_fields["kind"].annotation))


@pytest.mark.usefixtures("ray_local")
def test_a_trial_the_strategy_paused_and_left_is_a_paused_trial_the_user_resumes(tmp_path):
    from runner.control import ControlChannel

    run_dir = tmp_path / "run"
    data = _data(run_dir, "tests.trainables:quadratic", objective={"metric": "loss"},
                 search={"strategy": "tests.strategies:PausesForever"})
    events = []
    Sweep(parse_config(data, "s.yaml"), on_event=lambda k, i: events.append((k, i))).run()
    assert ControlChannel(str(run_dir)).paused() == {0}
    assert any("paused by the strategy, which has ended" in i.get("message", "")
               for k, i in events if k == "notice")


@pytest.mark.usefixtures("ray_local")
def test_a_refused_fork_is_asked_again_once_fixed(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    data = _data(run_dir, "tests.trainables:quadratic", objective={"metric": "loss"},
                 search={"strategy": "tests.strategies:ForksOnce"}, checkpoint={"keep_last": 10})
    monkeypatch.setenv("SWEEP_TEST_BREAK_FORK", "1")
    sweep = Sweep(parse_config(data, "s.yaml"))
    sweep.run()
    assert "are not the parent trial 0's" in sweep.abort_reason
    monkeypatch.delenv("SWEEP_TEST_BREAK_FORK")
    Sweep(parse_config(data, "s.yaml")).run()
    trials = _outcome(run_dir)[3]
    assert trials[1]["parent"] == 0 and trials[1]["parent_step"] == 100
