"""Every class of config mistake: one line naming file, key and expectation; exit 2; nothing on disk."""

from __future__ import annotations

import os

import pytest
import yaml

from runner.cli import main
from runner.config import ConfigError, load_config

GOOD = {
    "name": "cfg",
    "trainable": "tests.trainables:quadratic",
    "objective": {"metric": "loss", "direction": "minimize"},
    "budget": {"steps": 20, "report_every": 5, "checkpoint_every": 10},
    "search": {"sampler": "tpe", "seed": 1, "n_trials": 3},
    "hyperparams": {
        "learning_rate": {"choice": [
            {"kind": "warmup_cosine_decay", "init_value": 0.0,
             "peak_value": {"loguniform": [1e-4, 1e-1]}, "warmup_steps": {"int": [0, 5]},
             "decay_steps": 20},
            {"kind": "constant", "value": {"loguniform": [1e-4, 1e-1]}}]},
        "b1": 0.9,
    },
    "params": {"width": {"choice": [8, 16]}},
}


def _with(path: str, value):
    config = yaml.safe_load(yaml.safe_dump(GOOD))
    keys = path.split(".")
    node = config
    for key in keys[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return config


_DELETE = object()

BAD = [
    ("missing name", _with("name", _DELETE), "name: missing required key"),
    ("unknown top key", {**GOOD, "bogus": 1}, "bogus: unknown key"),
    ("bad trainable path", _with("trainable", "no_colon"), "trainable: expected 'package.module:function'"),
    ("unimportable trainable", _with("trainable", "nowhere.at_all:fn"), "trainable: cannot import module 'nowhere.at_all'"),
    ("missing function", _with("trainable", "tests.trainables:nothing"), "trainable: expected a function 'nothing'"),
    ("bad direction", _with("objective.direction", "down"), "objective.direction:"),
    ("report past budget", _with("budget.report_every", 50), "budget.report_every: expected at most steps (20)"),
    ("zero steps", _with("budget.steps", 0), "budget.steps: Input should be greater than or equal to 1"),
    ("steps as string", _with("budget.steps", "20"), "budget.steps: Input should be a valid integer"),
    ("unknown sampler", _with("search.sampler", "bayes"), "search.sampler:"),
    ("unknown pruner", {**GOOD, "pruner": {"kind": "early"}}, "pruner.kind:"),
    ("inverted bounds", _with("params.width", {"uniform": [2, 1]}), "params.width.uniform: expected low < high"),
    ("loguniform at zero", _with("params.width", {"loguniform": [0, 1]}), "params.width.loguniform: expected low > 0"),
    ("int bounds not ints", _with("params.width", {"int": [1.5, 3]}), "params.width.int: expected a list of two integers"),
    ("unknown schedule kind", _with("hyperparams.b1", {"kind": "cosine"}), "hyperparams.b1: kind: unknown schedule kind 'cosine'"),
    ("schedule missing field", _with("hyperparams.b1", {"kind": "linear", "init_value": 0.9, "end_value": 0.8}), "hyperparams.b1: linear.transition_steps: missing required field"),
    ("schedule extra field", _with("hyperparams.b1", {"kind": "constant", "value": 0.9, "peak": 1}), "hyperparams.b1: constant.peak: unknown field"),
    ("bad branch of a choice", _with("hyperparams.learning_rate", {"choice": [{"kind": "constant", "value": 0.1}, {"kind": "cosine_decay", "init_value": 0.1, "decay_steps": -3}]}), "cosine_decay.decay_steps: Input should be greater than or equal to 1"),
    ("bad range in a schedule", _with("hyperparams.b1", {"kind": "warmup_cosine_decay", "init_value": 0, "peak_value": 1, "warmup_steps": {"int": [5, 30]}, "decay_steps": 20}), "warmup_cosine_decay.decay_steps: expected more than warmup_steps (30)"),
    ("password in url", {**GOOD, "study_storage": "postgresql://me:secret@127.0.0.1/db"}, "study_storage: Value error, expected no password"),
    ("pruner with two objectives", {**GOOD, "objective": [{"metric": "a"}, {"metric": "b"}], "pruner": {"kind": "median"}}, "pruner.kind: expected 'none' with several objectives"),
    ("not a mapping", [1, 2], "expected a mapping of keys at the top level"),
    ("keep no checkpoint", {**GOOD, "checkpoint": {"keep_last": 0}}, "checkpoint.keep_last: Input should be greater than or equal to 1"),
    ("unknown checkpoint key", {**GOOD, "checkpoint": {"keep": 3}}, "checkpoint.keep: unknown key"),
    ("a metric but no best kept", {**GOOD, "checkpoint": {"metric": "loss"}}, "checkpoint.keep_best: expected at least 1 where a metric or mode ranks the best checkpoints"),
    ("best by a metric of unknown sense", {**GOOD, "checkpoint": {"keep_best": 1, "metric": "acc"}}, "checkpoint.mode: expected min or max for metric 'acc', which is not an objective"),
]


@pytest.mark.parametrize("label,data,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_clear_line_exit_2_and_nothing_on_disk(tmp_path, monkeypatch, capsys,
                                                                   label, data, expected):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    before = set(os.listdir(tmp_path))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"sweep: {path}: "), err
    assert expected.replace("Value error, ", "") in err, err
    assert "Traceback" not in err
    assert set(os.listdir(tmp_path)) == before


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nbudget: {steps: 3\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: line" in err and "invalid YAML" in err


def test_missing_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found" in capsys.readouterr().err


def test_good_config_loads_and_dry_run_prints_sampled_schedules(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    config = load_config(path)
    assert config.run_dir() == os.path.join("runs", "cfg")
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trial 0" in out and "learning_rate" in out and '"kind"' in out
    assert not (tmp_path / "runs").exists()


def test_checkpoint_options_reach_the_store(tmp_path):
    def options(checkpoint, objective=GOOD["objective"]):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({**GOOD, "objective": objective, "checkpoint": checkpoint}))
        return load_config(path).store_options()

    assert options({}) == {"keep_last": 2, "async_save": False, "max_pending_bytes": 1024 << 20}
    # best by the objective, in its direction, unless told otherwise
    assert options({"keep_best": 1}, {"metric": "acc", "direction": "maximize"}) == {
        "keep_last": 2, "async_save": False, "max_pending_bytes": 1024 << 20,
        "keep_best": 1, "metric": "acc", "mode": "max"}
    assert options({"keep_last": 1, "keep_best": 2, "metric": "val_acc", "mode": "max",
                    "async_save": True, "max_pending_mb": 0.5}) == {
        "keep_last": 1, "async_save": True, "max_pending_bytes": 1 << 19,
        "keep_best": 2, "metric": "val_acc", "mode": "max"}


def test_error_is_a_value_error_for_library_users(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with("budget.report_every", 50)))
    with pytest.raises(ConfigError, match="budget.report_every"):
        load_config(path)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "sweeps"))))
def test_every_shipped_sweep_validates_and_dry_runs(name, tmp_path, monkeypatch, capsys):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sweeps", name)
    monkeypatch.chdir(tmp_path)
    assert main(["run", path, "--dry-run"]) == 0
    assert "trial 2" in capsys.readouterr().out
