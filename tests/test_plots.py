"""Plots checked for what they hold (axes, scales, series, labels), read back from each PNG's
``sweep.plot`` chunk, on a run with a diverged trial, pruned and failed ones."""

from __future__ import annotations

import json

import optuna
import yaml
from PIL import Image

from runner.cli import main
from runner.config import parse_config
from runner.plots import plot_run
from runner.records import RunRecords

CONFIG = {"name": "plots", "trainable": "tests.trainables:quadratic",
          "objective": {"metric": "loss"},
          "budget": {"steps": 10, "report_every": 2, "checkpoint_every": 5},
          "search": {"n_trials": 8},
          "hyperparams": {"learning_rate": {"kind": "constant",
                                            "value": {"loguniform": [1e-4, 1.0]}}}}
# trial: (state, final value); trial 2 diverged, trial 5 ended NaN
TRIALS = {0: ("COMPLETE", 0.5), 1: ("COMPLETE", 0.2), 2: ("COMPLETE", 3e4), 3: ("PRUNED", None),
          4: ("FAIL", None), 5: ("COMPLETE", float("nan")), 6: ("COMPLETE", 0.1)}


def _run_dir(tmp_path, trials: dict) -> str:
    run = tmp_path / "run"
    run.mkdir()
    config = {**CONFIG, "storage": str(run)}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = RunRecords(str(run))
    from runner.study import storage

    study = optuna.create_study(study_name="plots", storage=storage(parse_config(config)))
    for number, (state, value) in trials.items():
        lr = 10 ** -(number % 4 + 1)
        spec = {"learning_rate": {"kind": "constant", "value": lr}}
        records.write("trials", number, [{"number": number, "state": state, "value": value,
                                          "params": "{}", "schedules": json.dumps(spec)}])
        curve = [(step, (value if value is not None else 1.0) * (1 + 10 / step))
                 for step in (2, 4, 6, 8, 10)]
        records.write("history", number, [{"trial": number, "step": s, "metric": "loss",
                                           "value": v} for s, v in curve])
        if state == "COMPLETE" and value == value:
            study.add_trial(optuna.trial.create_trial(
                params={"hyperparams.learning_rate.value": lr},
                distributions={"hyperparams.learning_rate.value":
                               optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)},
                value=value))
    return str(run)


def _shown(path) -> dict:
    image = Image.open(path)
    assert image.size[0] >= 900 and len(image.convert("L").getcolors()) > 10  # not blank
    return json.loads(image.text["sweep.plot"])["axes"]


def test_plots_survive_a_diverged_trial_and_show_pruned_ones(tmp_path):
    plots = plot_run(_run_dir(tmp_path, TRIALS), str(tmp_path / "plots"))
    assert [p.rsplit("/", 1)[1] for p in plots.paths] == [
        "history.png", "curves.png", "schedules.png", "importances.png"] and plots.notes == []
    (history,) = _shown(plots.paths[0])
    assert history["yscale"] == "log" and history["title"].endswith("(1 non-finite not shown)")
    series = {s["label"]: s["points"] for s in history["series"]}
    assert series == {"complete": 4, "pruned (last value)": 1, "best so far": 4}
    (curves,) = _shown(plots.paths[1])
    assert curves["yscale"] == "log" and curves["xlabel"] == "step"
    labels = [s["label"] for s in curves["series"]]
    assert {"trial 6 (#1)", "trial 1 (#2)", "trial 0 (#3)", "trial 2", "trial 3"} <= set(labels)
    (schedule,) = _shown(plots.paths[2])
    assert schedule["ylabel"] == "learning_rate" and len(schedule["series"]) == 3
    (importances,) = _shown(plots.paths[3])
    assert importances["yticklabels"] == ["hyperparams.learning_rate.value"]
    assert importances["side_titles"] == []  # optuna's title, over ours (a stranger's find)


def test_no_completed_trial_gives_a_note_and_no_png(tmp_path, capsys):
    run = _run_dir(tmp_path, {0: ("PRUNED", None), 1: ("FAIL", None)})
    assert main(["plot", run]) == 0
    assert capsys.readouterr().out == "plots: no completed trial with a finite loss yet: no plots\n"
    assert not (tmp_path / "run" / "plots").exists()


def test_one_completed_trial_has_plots_but_no_importances(tmp_path):
    plots = plot_run(_run_dir(tmp_path, {0: ("COMPLETE", 0.5)}), str(tmp_path / "plots"))
    assert len(plots.paths) == 3
    assert plots.notes == ["parameter importances need 2 completed trials with sampled parameters"]
