"""The search space: config values with distributions, sampled define-by-run through Optuna.

A value anywhere in ``hyperparams`` or ``params`` may be a distribution:
``{loguniform: [a, b]}``, ``{uniform: [a, b]}``, ``{int: [a, b]}`` (with optional ``step`` or
``log``), ``{choice: [...]}``. A choice between mappings (schedule specs of different kinds) is a
conditional space: only the chosen branch's parameters are sampled.
"""

from __future__ import annotations

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


def _bounds(path: str, kind: str, value: Mapping) -> tuple[float, float]:
    extra = set(value) - {kind} - (_INT_OPTIONS if kind == "int" else set())
    if extra:
        raise DistributionError(f"{path}: unexpected key {sorted(extra)[0]!r} beside {kind!r}")
    bounds = value[kind]
    numbers = isinstance(bounds, list) and len(bounds) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
    if not numbers or (kind == "int" and not all(isinstance(b, int) for b in bounds)):
        what = "two integers" if kind == "int" else "two numbers"
        raise DistributionError(f"{path}.{kind}: expected a list of {what} [low, high], got {bounds!r}")
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
    """Walks every branch of every choice, drawing bounds, to validate the whole space up front."""

    def __init__(self, choice_index: int, bound: int) -> None:
        self.choice_index, self.bound = choice_index, bound

    def categorical(self, name, options):
        return options[self.choice_index % len(options)]

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
        for index in range(_branch_count(value)):
            for bound in (0, 1):
                concrete = sample(value, path, _Exhaust(index, bound))
                if schedule_keys:
                    to_schedule(concrete, path)


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
