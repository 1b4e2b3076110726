"""Every class of config mistake: one line naming file, key and expectation; exit 2; nothing on disk."""

from __future__ import annotations

import json
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
    ("zero min_resource", {**GOOD, "pruner": {"kind": "asha", "min_resource": 0}},
     "pruner.min_resource: Input should be greater than or equal to 1 (got 0)"),
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
    ("misspelt distribution in a schedule", _with("hyperparams.learning_rate", {"kind": "constant", "value": {"log_uniform": [1e-4, 1e-1]}}), "hyperparams.learning_rate.value: unknown distribution 'log_uniform' (did you mean 'loguniform'? known: loguniform, uniform, int, choice)"),
    ("misspelt distribution in a branch", _with("hyperparams.learning_rate", {"choice": [{"kind": "constant", "value": 0.1}, {"kind": "wsd", "peak_value": {"loguniform": [1e-4, 1e-1]}, "warmup_steps": {"nt": [0, 5]}, "stable_steps": 5, "decay_steps": 5}]}), "hyperparams.learning_rate.wsd.warmup_steps: unknown distribution 'nt' (did you mean 'int'? known: loguniform, uniform, int, choice)"),
    ("unknown distribution where a number goes", _with("hyperparams.b1", {"normal": [0.8, 0.95]}), "hyperparams.b1: unknown distribution 'normal' (known: loguniform, uniform, int, choice)"),
    ("misspelt distribution in params", _with("params.width", {"chioce": [8, 16]}), "params.width: unknown distribution 'chioce' (did you mean 'choice'? known: loguniform, uniform, int, choice)"),
    ("choice of nothing", _with("params.width", {"choice": []}), "params.width.choice: expected a non-empty list of options, got []"),
    ("choice not a list", _with("params.width", {"choice": 8}), "params.width.choice: expected a non-empty list of options, got 8"),
    ("key beside a choice", _with("params.width", {"choice": [8, 16], "step": 2}), "params.width: unexpected key 'step' beside 'choice'"),
    ("bad option of a nested choice", _with("hyperparams.learning_rate", {"choice": [{"kind": "constant", "value": 0.1}, {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 0.1, "warmup_steps": {"choice": [30, 5]}, "decay_steps": 20}]}), "hyperparams.learning_rate: warmup_cosine_decay.decay_steps: expected more than warmup_steps (30)"),
    ("misspelt hyperparameter", _with("hyperparams.learnin_rate", 0.1), "hyperparams.learnin_rate: unknown hyperparameter (did you mean 'learning_rate'? known: learning_rate, b1, b2, eps, weight_decay, momentum, or a param_group key)"),
    ("grid sampler over a float range", _with("search.sampler", "grid"), "hyperparams.learning_rate.warmup_cosine_decay.peak_value: the grid sampler needs 'choice' or 'int' distributions, got 'loguniform'"),
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


def test_raw_param_group_keys_stay_allowed(tmp_path):
    path = tmp_path / "raw.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "hyperparams": {"lr": 0.1, "betas.1": 0.99,
                                                            "alpha": 0.9, "momentum_decay": 0.004}}))
    assert set(load_config(path).hyperparams) == {"lr", "betas.1", "alpha", "momentum_decay"}


def test_params_may_hold_any_dict(tmp_path):
    path = tmp_path / "dicts.yaml"
    params = {"layers": {"sizes": [8, 16]}, "data": {"name": "digits"}, "mix": {"a": 1, "b": 2}}
    path.write_text(yaml.safe_dump({**GOOD, "params": params}))
    assert load_config(path).params == params


def _dry_run(tmp_path, monkeypatch, capsys, **changes):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "dry.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **changes}))
    code = main(["run", str(path), "--dry-run"])
    out, err = capsys.readouterr()
    assert not (tmp_path / "runs").exists()
    return code, out, err


# warmup 0..900 and decay 100..1000: both ends of both ranges are valid, warmup 500 / decay 300 not
CLASHING = {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 1e-3,
            "warmup_steps": {"int": [0, 900]}, "decay_steps": {"int": [100, 1000]}}


def test_dry_run_measures_the_share_of_invalid_points(tmp_path, monkeypatch, capsys):
    code, out, err = _dry_run(tmp_path, monkeypatch, capsys, hyperparams={"learning_rate": CLASHING},
                              search={"sampler": "tpe", "seed": 3, "n_trials": 3})
    assert code == 0 and not err
    line = next(x for x in out.splitlines() if x.startswith("sampled 200 points: "))
    invalid = int(line.split()[3])
    assert 0 < invalid < 200
    assert f"{invalid} ({invalid / 2:.1f}%) give an invalid schedule, e.g. hyperparams.learning_rate: " \
           "warmup_cosine_decay.decay_steps: expected more than warmup_steps (" in line
    shown = [x for x in out.splitlines() if x.startswith("trial ") and ": params " in x]
    skipped = [x for x in out.splitlines() if "invalid schedule, the sweep would fail it: " in x]
    assert len(shown) == 3
    assert all(x.split(":", 2)[1].strip() == "invalid schedule, the sweep would fail it"
               and "hyperparams.learning_rate: warmup_cosine_decay.decay_steps" in x for x in skipped)


def test_dry_run_of_a_valid_space_says_so(tmp_path, monkeypatch, capsys):
    code, out, _ = _dry_run(tmp_path, monkeypatch, capsys)
    assert code == 0
    assert "sampled 200 points: every one gives valid schedules" in out


def test_dry_run_refuses_a_space_without_a_valid_point(tmp_path, monkeypatch, capsys):
    # decay_steps log-uniform (mostly small) against warmup_steps uniform (mostly large), three
    # times over: the corners are valid, about one point in ten thousand is.
    part = {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 1e-3,
            "warmup_steps": {"int": [0, 10**9]}, "decay_steps": {"int": [1, 10**9 + 1], "log": True}}
    hyperparams = {"learning_rate": {"kind": "join", "boundaries": [10, 20],
                                     "schedules": [part, part, part]}}
    code, out, err = _dry_run(tmp_path, monkeypatch, capsys, hyperparams=hyperparams)
    assert code == 2
    assert "sampled 200 points: 200 (100.0%) give an invalid schedule, e.g. " \
           "hyperparams.learning_rate: join.schedules." in out
    assert err.count("\n") == 1 and err.startswith(
        "sweep: every sampled point gives an invalid schedule, so the sweep would fail every trial "
        "(e.g. hyperparams.learning_rate: join.schedules."), err


def test_dry_run_prints_config_values_verbatim(tmp_path, monkeypatch, capsys):
    code, out, _ = _dry_run(tmp_path, monkeypatch, capsys,
                            params={"nesterov": {"choice": [False, True]}, "sizes": [8, 16]})
    assert code == 0
    assert 'params.nesterov: {"choice": [false, true]}' in out
    assert 'params.sizes: [8, 16]' in out
    assert all(line.startswith(("trial ", "  ", "cfg", "search space", "sampled"))
               for line in out.splitlines()), out  # nothing wrapped onto a line of its own


def test_a_misspelt_top_key_is_named_with_the_key_it_was_meant_to_be(tmp_path, capsys):
    data = {k: v for k, v in GOOD.items() if k != "budget"}
    data["budjet"] = GOOD["budget"]
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err == f"sweep: {path}: budjet: unknown key (did you mean 'budget'?)\n"


def test_an_invalid_corner_of_the_space_says_which_end(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["hyperparams"]["learning_rate"] = {
        "kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 1e-2,
        "warmup_steps": {"int": [5, 120]}, "decay_steps": {"int": [50, 100]}}
    path = tmp_path / "corner.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"with every range of hyperparams.learning_rate at its "
                                          r"high end\)$"):
        load_config(path)


def test_a_number_yaml_reads_as_text_gets_a_hint(tmp_path):
    text = yaml.safe_dump(GOOD).replace("- 0.0001\n      - 0.1", "- 1e-4\n      - 1e-1")
    data = yaml.safe_load(text)
    data["params"] = {"lr2": {"loguniform": ["1e-4", "1e-1"]}}
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"YAML reads 1e-4 as text, not a number"):
        load_config(path)


def test_a_schedule_mistake_the_ranges_do_not_cause_names_no_range_end(tmp_path):
    """Before: an unknown kind said "(with every range ... at its low end)", as if a bound
    were to blame; a bound that is to blame still says which end."""
    from runner.config import ConfigError, parse_config

    data = json.loads(json.dumps(GOOD))
    data["hyperparams"] = {"learning_rate": {"kind": "wsdd", "peak_value": {"loguniform": [1e-4,
                                                                                         1e-2]}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "s.yaml")
    assert "unknown schedule kind 'wsdd'" in str(caught.value)
    assert "at its low end" not in str(caught.value)
    data["hyperparams"] = {"learning_rate": {
        "kind": "wsd", "peak_value": 0.01, "warmup_steps": {"int": [0, 50]}, "stable_steps": 10,
        "decay_steps": {"int": [0, 5]}}}  # decay_steps 0 is invalid: only at the low end
    with pytest.raises(ConfigError, match=r"at its low end\)$"):
        parse_config(data, "s.yaml")
