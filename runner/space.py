"""The search space: config values with distributions, sampled define-by-run through Optuna.

A value anywhere in ``hyperparams`` or ``params`` may be a distribution:
``{loguniform: [a, b]}``, ``{uniform: [a, b]}``, ``{int: [a, b]}`` (with optional ``step`` or
``log``), ``{choice: [...]}``. A choice between mappings (schedule specs of different kinds) is a
conditional space: only the chosen branch's parameters are sampled.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

import schedules

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
_INT_OPTIONS = {"step", "log"}


class DistributionError(ValueError):
    """A distribution in the config is malformed; the message starts with its key path."""


def distribution_kind(value: Any) -> str | None:
    """The distribution a config value declares, or None for a plain value."""
    if isinstance(value, Mapping):
        kinds = [k for k in value if k in DISTRIBUTIONS]
        if kinds:
            return kinds[0]
    return None


def declares_distribution(value: Any) -> bool:
    """Whether ``value`` draws anything: a distribution in it, at any depth."""
    if distribution_kind(value) is not None:
        return True
    children = value.values() if isinstance(value, Mapping) else \
        value if isinstance(value, list) else ()
    return any(declares_distribution(child) for child in children)


def _is_bounds(value: Any) -> bool:
    """A ``[low, high]`` pair of numbers: what a distribution's argument looks like."""
    return isinstance(value, list) and len(value) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) for b in value)


def _unknown_distribution(value: Any, numbers: bool) -> str | None:
    """What is wrong with a one-key mapping that looks like a misspelt distribution, else None.

    Anywhere a key close to a distribution name is suspect; where a number is expected (a
    hyperparameter or a schedule field) so is any identifier-like key holding ``[low, high]``.
    Other mappings are left alone: ``params`` values may be any dict.
    """
    if not isinstance(value, Mapping) or len(value) != 1:
        return None
    (key,) = value
    if not isinstance(key, str) or key in DISTRIBUTIONS:
        return None
    close = difflib.get_close_matches(key, DISTRIBUTIONS, n=1, cutoff=0.75)
    if not close and not (numbers and key.isidentifier() and _is_bounds(value[key])):
        return None
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown distribution {key!r} ({hint}known: {', '.join(DISTRIBUTIONS)})"


def check_distributions(value: Any, path: str, *, numbers: bool) -> None:
    """Raise DistributionError naming a misspelt distribution (``log_uniform``) and the known ones.

    Without this a typo reaches the schedule as a plain mapping and is reported as "expected a
    number", which hides the real mistake. ``numbers``: the value is a hyperparameter's.
    """
    problem = _unknown_distribution(value, numbers)
    if problem:
        raise DistributionError(f"{path}: {problem}")
    kind = distribution_kind(value)
    if kind == "choice":
        options = _options(path, value)
        for index, option in enumerate(options):
            label = _label(index, option, options)
            check_distributions(option, f"{path}.{label}" if isinstance(option, Mapping) else path,
                                numbers=numbers)
    elif kind is None and isinstance(value, Mapping):
        for k, v in value.items():
            check_distributions(v, f"{path}.{k}", numbers=numbers)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_distributions(v, f"{path}.{i}", numbers=numbers)


def _options(path: str, value: Mapping) -> list:
    """A choice's options: a non-empty list, with nothing beside it."""
    extra = set(value) - {"choice"}
    if extra:
        raise DistributionError(f"{path}: unexpected key {sorted(extra)[0]!r} beside 'choice'")
    options = value["choice"]
    if not isinstance(options, list) or not options:
        raise DistributionError(f"{path}.choice: expected a non-empty list of options, "
                                f"got {options!r}")
    return options


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _bounds(path: str, kind: str, value: Mapping) -> tuple[float, float]:
    extra = set(value) - {kind} - (_INT_OPTIONS if kind == "int" else set())
    if extra:
        raise DistributionError(f"{path}: unexpected key {sorted(extra)[0]!r} beside {kind!r}")
    bounds = value[kind]
    if not _is_bounds(bounds) or (kind == "int" and not all(isinstance(b, int) for b in bounds)):
        what = "two integers" if kind == "int" else "two numbers"
        texts = [b for b in bounds if isinstance(b, str)] if isinstance(bounds, list) else []
        hint = (f" (YAML reads {texts[0]} as text, not a number: write it with a decimal point, "
                f"such as 1.0e-3)" if texts and _numeric(texts[0]) else "")
        raise DistributionError(f"{path}.{kind}: expected a list of {what} [low, high], got "
                                f"{bounds!r}{hint}")
    low, high = bounds
    if not low < high:
        raise DistributionError(f"{path}.{kind}: expected low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise DistributionError(f"{path}.loguniform: expected low > 0, got {low}")
    return low, high


def _label(index: int, option: Any, options: list) -> str:
    kind = option.get("kind") if isinstance(option, Mapping) else None
    if kind and sum(isinstance(o, Mapping) and o.get("kind") == kind for o in options) == 1:
        return str(kind)
    return f"{index}:{kind}" if kind else str(index)


def _primitive(options: list) -> bool:
    return all(o is None or isinstance(o, (bool, int, float, str)) for o in options)


def sample(value: Any, path: str, suggest: "Suggest") -> Any:
    """The concrete value of ``value``, drawing every distribution through ``suggest``."""
    kind = distribution_kind(value)
    if kind == "choice":
        options = value["choice"]
        if _primitive(options):
            return suggest.categorical(path, options)
        labels = [_label(i, o, options) for i, o in enumerate(options)]
        picked = suggest.categorical(path, labels)
        index = labels.index(picked)
        branch = options[index]
        prefix = f"{path}.{picked}" if isinstance(branch, Mapping) else path
        return sample(branch, prefix, suggest)
    if kind is not None:
        low, high = _bounds(path, kind, value)
        if kind == "int":
            return suggest.int(path, low, high, step=value.get("step", 1), log=value.get("log", False))
        return suggest.float(path, float(low), float(high), log=kind == "loguniform")
    if isinstance(value, Mapping):
        return {k: sample(v, f"{path}.{k}", suggest) for k, v in value.items()}
    if isinstance(value, list):
        return [sample(v, f"{path}.{i}", suggest) for i, v in enumerate(value)]
    return value


class Suggest:
    """The few draws ``sample`` needs; ``OptunaSuggest`` and ``LowSuggest`` implement them."""

    def categorical(self, name: str, options: list) -> Any: ...
    def int(self, name: str, low: int, high: int, *, step: int, log: bool) -> int: ...
    def float(self, name: str, low: float, high: float, *, log: bool) -> float: ...


class OptunaSuggest(Suggest):
    def __init__(self, trial) -> None:
        self.trial = trial

    def categorical(self, name, options):
        return self.trial.suggest_categorical(name, options)

    def int(self, name, low, high, *, step, log):
        return self.trial.suggest_int(name, low, high, step=step, log=log)

    def float(self, name, low, high, *, log):
        return self.trial.suggest_float(name, low, high, log=log)


class _Exhaust(Suggest):
    """Walks every branch of every choice, drawing bounds, to validate the whole space up front.

    ``choice_index`` is read in mixed radix: a choice nested in a branch of another (its name
    extends the outer one's) takes the digit after the outer choice's, so across the indices of
    ``_branch_count`` each of its options meets each outer branch it lives in. Sibling choices
    share a digit, like ranges share a bound.
    """

    def __init__(self, choice_index: int, bound: int) -> None:
        self.choice_index, self.bound = choice_index, bound
        self.sizes: dict[str, int] = {}

    def categorical(self, name, options):
        radix = 1
        for outer, size in self.sizes.items():
            if name.startswith(f"{outer}."):
                radix *= size
        self.sizes[name] = len(options)
        return options[self.choice_index // radix % len(options)]

    def int(self, name, low, high, *, step, log):
        return (low, high)[self.bound]

    def float(self, name, low, high, *, log):
        return (low, high)[self.bound]


def _branch_count(value: Any) -> int:
    kind = distribution_kind(value)
    if kind == "choice":
        return max(1, len(value["choice"])) * max([_branch_count(o) for o in value["choice"]] or [1])
    if isinstance(value, Mapping) and kind is None:
        total = 1
        for v in value.values():
            total = max(total, _branch_count(v))
        return total
    return 1


def check_space(section: Mapping[str, Any], name: str, *, schedule_keys: bool) -> None:
    """Raise DistributionError or ScheduleError (prefixed with the key path) for any bad value.

    For ``hyperparams`` every branch of every choice must become a valid schedule at both ends of
    every range, so a bad spec is reported before a single trial runs.
    """
    for key, value in section.items():
        path = f"{name}.{key}"
        check_distributions(value, path, numbers=schedule_keys)
        for index in range(_branch_count(value)):
            problems = {}
            for bound in (0, 1):
                concrete = sample(value, path, _Exhaust(index, bound))
                if not schedule_keys:
                    continue
                try:
                    to_schedule(concrete, path)
                except schedules.ScheduleError as exc:
                    if concrete == value:
                        raise
                    problems[("low", "high")[bound]] = str(exc)
            if len(set(problems.values())) == 1 and len(problems) == 2:  # not the ranges' doing
                raise schedules.ScheduleError(problems["low"])
            for end, problem in problems.items():
                raise schedules.ScheduleError(
                    f"{problem} (with every range of {path} at its {end} end)")


def to_schedule(value: Any, path: str) -> schedules.Schedule:
    """A sampled hyperparameter value as a schedule; errors carry the config key path."""
    try:
        return schedules.as_schedule(value)
    except schedules.ScheduleError as exc:
        raise schedules.ScheduleError(f"{path}: {exc}") from None


def grid_space(section: Mapping[str, Any], name: str) -> dict[str, list]:
    """Optuna GridSampler's search space: every distribution must be a choice or an int range."""
    grid: dict[str, list] = {}

    def walk(value: Any, path: str) -> None:
        kind = distribution_kind(value)
        if kind == "choice":
            options = value["choice"]
            if _primitive(options):
                grid[path] = list(options)
                return
            labels = [_label(i, o, options) for i, o in enumerate(options)]
            grid[path] = labels
            for label, option in zip(labels, options):
                walk(option, f"{path}.{label}" if isinstance(option, Mapping) else path)
        elif kind == "int":
            low, high = _bounds(path, kind, value)
            grid[path] = list(range(low, high + 1, value.get("step", 1)))
        elif kind is not None:
            raise DistributionError(f"{path}: the grid sampler needs 'choice' or 'int' "
                                    f"distributions, got {kind!r}")
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{path}.{k}")

    for key, value in section.items():
        walk(value, f"{name}.{key}")
    return grid


def realize(hyperparams: Mapping[str, Any], params: Mapping[str, Any], trial) -> tuple[dict, dict]:
    """A trial's concrete params and schedule specs, sampled define-by-run from an Optuna trial."""
    suggest = OptunaSuggest(trial)
    specs = {name: to_schedule(sample(value, f"hyperparams.{name}", suggest),
                               f"hyperparams.{name}").spec()
             for name, value in hyperparams.items()}
    concrete = {name: sample(value, f"params.{name}", suggest) for name, value in params.items()}
    return concrete, specs


def invalid_points(hyperparams: Mapping[str, Any], params: Mapping[str, Any], *,
                   seed: int | None, count: int) -> tuple[int, str | None]:
    """How many of ``count`` random points give an invalid schedule, and the first one's reason.

    ``check_space`` draws every range at its low ends together and at its high ends together;
    ranges that constrain each other (warmup_steps against decay_steps) can still clash in
    between, and the sweep fails such trials one by one.
    """
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    invalid, reason = 0, None
    for _ in range(count):
        try:
            realize(hyperparams, params, study.ask())
        except schedules.ScheduleError as exc:
            invalid += 1
            reason = reason or str(exc)
    return invalid, reason
