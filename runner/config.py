"""The sweep config: a YAML file validated before anything starts.

Every mistake becomes a ``ConfigError`` whose one line names the file, the key path and what was
expected; the CLI turns it into exit code 2 with nothing created on disk.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

import schedules
from runner.space import DistributionError, check_space, grid_space

OPTIMIZER_HYPERPARAMS = ("learning_rate", "b1", "b2", "eps", "weight_decay", "momentum")


class ConfigError(ValueError):
    """A config mistake, already phrased as ``file: key.path: what was expected``."""


IMPORT_PATH = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"  # package.module:name


def _builtin_or_class(name: str, builtin: Any) -> str:
    """A built-in's name, or a class by import path (imported later, when it is used)."""
    if name not in builtin and not re.fullmatch(IMPORT_PATH, name):
        raise ValueError(f"expected {', '.join(builtin)} or 'package.module:Class'")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Objective(_Strict):
    metric: str = Field(min_length=1)
    direction: Literal["minimize", "maximize"] = "minimize"


class Budget(_Strict):
    steps: int = Field(ge=1)
    report_every: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)

    @model_validator(mode="after")
    def _within_budget(self):
        for key in ("report_every", "checkpoint_every"):
            if getattr(self, key) > self.steps:
                raise ValueError(f"{key}: expected at most steps ({self.steps}), "
                                 f"got {getattr(self, key)}")
        return self


class Checkpointing(_Strict):
    """Retention and background saving of each trial's checkpoints (how often: budget)."""

    keep_last: int = Field(default=2, ge=1)
    keep_best: int = Field(default=0, ge=0)
    metric: Optional[str] = Field(default=None, min_length=1)
    mode: Optional[Literal["min", "max"]] = None
    async_save: bool = False
    max_pending_mb: float = Field(default=1024.0, gt=0)


class Search(_Strict):
    """How trials are chosen. Keys beyond these are the strategy's options (its ``Options``)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    strategy: str = "optuna"
    sampler: Literal["tpe", "random", "cmaes", "gp", "grid", "nsga2", "qmc"] = "tpe"
    seed: Optional[int] = None
    n_trials: Optional[int] = Field(default=None, ge=1)
    timeout: Optional[float] = Field(default=None, gt=0)

    @field_validator("strategy")
    @classmethod
    def _strategy_name(cls, name: str) -> str:
        from runner.strategy import BUILTIN

        return _builtin_or_class(name, BUILTIN)

    @model_validator(mode="after")
    def _options(self):
        from runner.strategy import BUILTIN

        if self.strategy in BUILTIN:
            problem = strategy_options_problem(BUILTIN[self.strategy], self.strategy_options)
            if problem:
                raise ValueError(problem)
        if self.strategy == "optuna" and self.n_trials is None:
            raise ValueError("n_trials: missing required key")
        return self

    @property
    def strategy_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def strategy_options_problem(cls: type, options: dict[str, Any]) -> Optional[str]:
    """``key: what was expected`` for options a strategy class does not take, or None."""
    model = getattr(cls, "Options", None)
    known = list(Search.model_fields) + list(model.model_fields if model is not None else ())
    unknown = sorted(options) if model is None else []
    if model is not None:
        try:
            model.model_validate(options)
        except ValidationError as exc:  # a misspelled key first: it explains the missing one
            first = next((e for e in exc.errors() if e["type"] == "extra_forbidden"),
                         exc.errors()[0])
            if first["type"] != "extra_forbidden":
                return _format(first, exc.errors())
            unknown = [str(first["loc"][0])]
    if not unknown:
        return None
    close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
    return f"{unknown[0]}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")


class Pruner(_Strict):
    kind: Literal["none", "median", "percentile", "successive_halving", "asha", "hyperband"] = "none"
    n_startup_trials: int = Field(default=5, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)
    interval_steps: int = Field(default=1, ge=1)
    percentile: float = Field(default=25.0, gt=0, lt=100)
    min_resource: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = "auto"
    max_resource: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = "auto"
    reduction_factor: int = Field(default=3, ge=2)

    @model_validator(mode="after")
    def _brackets(self):
        if self.kind == "hyperband" and isinstance(self.min_resource, int) and \
                isinstance(self.max_resource, int) and self.max_resource < self.min_resource:
            raise ValueError(f"max_resource: expected at least min_resource "
                             f"({self.min_resource}), got {self.max_resource} (hyperband would "
                             f"have no bracket and prune nothing)")
        return self


class Fidelity(_Strict):
    """What a trial's score at a rung is: its run so far (``truncate``), or the result of a
    cooldown branched from its trunk to the rung (``cooldown``): see runner/cooldown.py."""

    kind: Literal["truncate", "cooldown"] = "truncate"
    fraction: float = Field(default=0.2, gt=0, lt=1)
    decay_type: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"
    rungs: Optional[list[Annotated[int, Field(ge=1)]]] = Field(default=None, min_length=1)
    schedules: list[str] = Field(default=["learning_rate"], min_length=1)

    @model_validator(mode="after")
    def _increasing(self):
        if self.rungs is not None and self.rungs != sorted(set(self.rungs)):
            raise ValueError(f"rungs: expected strictly increasing steps, got {self.rungs}")
        if self.kind == "truncate" and self.model_fields_set - {"kind"}:
            raise ValueError(f"{sorted(self.model_fields_set - {'kind'})[0]}: only used with "
                             f"kind cooldown")
        return self


class Resources(_Strict):
    cpu: float = Field(default=1.0, ge=0)
    gpu: float = Field(default=0.0, ge=0)
    custom: dict[str, float] = Field(default_factory=dict)

    @field_validator("gpu")
    @classmethod
    def _whole_or_fraction(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError(f"expected a fraction below 1 or a whole number of GPUs, got {gpu}")
        return gpu


BUILTIN_LOGGERS = {"tensorboard": ("dir",), "mlflow": ("tracking_uri", "experiment")}


class LoggerConfig(_Strict):
    """One logger fed by the driver's events: a built-in name or a user class by import path."""

    kind: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str) -> str:
        if kind.startswith("__main__:"):
            raise ValueError("loggers run in a process of their own, which cannot import your "
                             "script's __main__: put the class in a module and name that")
        return _builtin_or_class(kind, BUILTIN_LOGGERS)

    @model_validator(mode="after")
    def _options(self):
        known = BUILTIN_LOGGERS.get(self.kind)
        unknown = sorted(set(self.options) - set(known)) if known is not None else []
        if unknown:
            raise ValueError(f"options.{unknown[0]}: unknown option of the {self.kind} logger "
                             f"(known: {', '.join(known)})")
        return self


class SweepConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    trainable: str
    objective: Union[Objective, list[Objective]]
    budget: Budget
    search: Search
    pruner: Pruner = Field(default_factory=Pruner)
    fidelity: Fidelity = Field(default_factory=Fidelity)
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int = Field(default=1, ge=1)
    storage: Optional[str] = None
    storage_shared: bool = False
    study_storage: Optional[str] = None
    retries: int = Field(default=0, ge=0)
    max_restarts: int = Field(default=3, ge=0)
    seed: int = 0
    trial_seed: Optional[int] = None
    loggers: list[LoggerConfig] = Field(default_factory=list)

    @field_validator("loggers", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """``- tensorboard`` is short for ``- {kind: tensorboard}``."""
        if isinstance(value, list):
            return [{"kind": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("loggers")
    @classmethod
    def _distinct(cls, loggers: list[LoggerConfig]) -> list[LoggerConfig]:
        """Two alike would write the same files or runs, each over the other."""
        for index, spec in enumerate(loggers):
            if spec in loggers[:index]:
                raise ValueError(f"loggers.{index} is the same as "
                                 f"loggers.{loggers.index(spec)}; keep one")
        return loggers

    @field_validator("trainable")
    @classmethod
    def _import_path(cls, value: str) -> str:
        if not re.fullmatch(IMPORT_PATH, value):
            raise ValueError(f"expected 'package.module:function', got {value!r}")
        return value

    @field_validator("objective", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) == 1:
            return value[0]
        return value

    @field_validator("study_storage")
    @classmethod
    def _no_password_in_url(cls, url: Optional[str]) -> Optional[str]:
        if url and re.match(r"^\w+(\+\w+)?://[^/@]*:[^/@]*@", url):
            raise ValueError("expected no password in the URL; set it in the environment "
                             "(SWEEP_DB_PASSWORD or PGPASSWORD)")
        return url

    @model_validator(mode="after")
    def _consistent(self):
        if self.objectives_count > 1 and self.pruner.kind != "none":
            raise ValueError("pruner.kind: expected 'none' with several objectives "
                             "(Optuna cannot prune multi-objective trials)")
        if self.objectives_count > 1 and self.search.sampler == "cmaes":
            raise ValueError("search.sampler: expected a multi-objective sampler (nsga2, tpe, "
                             "random, gp, qmc, grid) with several objectives, got 'cmaes'")
        ckpt = self.checkpoint
        if not ckpt.keep_best and (ckpt.metric or ckpt.mode):
            raise ValueError("checkpoint.keep_best: expected at least 1 where a metric or mode "
                             "ranks the best checkpoints")
        if ckpt.keep_best and ckpt.mode is None and \
                self.best_metric not in {o.metric for o in self.objectives}:
            raise ValueError(f"checkpoint.mode: expected min or max for metric "
                             f"{self.best_metric!r}, which is not an objective")
        if self.fidelity.kind == "cooldown":
            from runner.cooldown import config_problem

            problem = config_problem(self)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def best_metric(self) -> str:
        """The metric the best checkpoints are kept by: by default the (first) objective's."""
        return self.checkpoint.metric or self.objectives[0].metric

    def store_options(self) -> dict[str, Any]:
        """Keyword arguments for each trial's CheckpointStore."""
        ckpt = self.checkpoint
        options: dict[str, Any] = {"keep_last": ckpt.keep_last, "async_save": ckpt.async_save,
                                   "max_pending_bytes": int(ckpt.max_pending_mb * 2**20)}
        if ckpt.keep_best:
            direction = {o.metric: o.direction for o in self.objectives}.get(self.best_metric)
            mode = ckpt.mode or ("min" if direction == "minimize" else "max")
            options.update(keep_best=ckpt.keep_best, metric=self.best_metric, mode=mode)
        return options

    @property
    def objectives(self) -> list[Objective]:
        return self.objective if isinstance(self.objective, list) else [self.objective]

    @property
    def objectives_count(self) -> int:
        return len(self.objectives)

    def run_dir(self) -> str:
        return self.storage or os.path.join("runs", self.name)


def _format(error: dict[str, Any], errors: list = ()) -> str:
    loc = ".".join(str(p) for p in error["loc"]  # drop pydantic's union-member labels
                   if not re.match(r"^(function-|constrained-|list\[|literal\[|[A-Z]\w*$)", str(p)))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{loc}: missing required key"
    if error["type"] == "extra_forbidden":
        import difflib

        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing"
                   and e["loc"][:-1] == error["loc"][:-1]]
        close = difflib.get_close_matches(str(error["loc"][-1]), missing, n=1, cutoff=0.6) or \
            difflib.get_close_matches(str(error["loc"][-1]), _keys_at(error["loc"][:-1]), n=1,
                                      cutoff=0.75)
        return f"{loc}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if error["type"] == "value_error" and re.match(r"^[\w.]+: ", message):
        return f"{loc}.{message}" if loc else message  # a cross-field check names its own key
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{loc}: {message}{shown}" if loc else f"{message}{shown}"


def _keys_at(path: tuple) -> list[str]:
    """The keys the config model takes at ``path`` (``("fidelity",)``), [] where it is free."""
    import typing

    model: Any = SweepConfig
    for part in path:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and \
            issubclass(model, BaseModel) else None
        if field is None:
            return []
        models = [a for a in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models:
            return []
        model = models[0]
    return list(model.model_fields)


def _hyperparam_name_problem(key: str) -> str | None:
    """What is wrong with a hyperparams key, or None: an optax name or any param_group key works.

    A key close to an optax name (``learnin_rate``) is a typo that would fail every trial alike,
    so it is refused here; a raw param_group key cannot be checked before the optimizer exists.
    """
    known = ", ".join(OPTIMIZER_HYPERPARAMS)
    if key in OPTIMIZER_HYPERPARAMS:
        return None
    close = difflib.get_close_matches(key, OPTIMIZER_HYPERPARAMS, n=1, cutoff=0.75)
    if close:
        return f"unknown hyperparameter (did you mean {close[0]!r}? known: {known}, or a " \
               f"param_group key)"
    if not re.fullmatch(r"[A-Za-z_]\w*(\.\d+)?", key):
        return f"expected an optimizer hyperparameter ({known}) or a param_group key"
    return None


def parse_config(data: Any, source: str = "<config>") -> SweepConfig:
    """Validate a loaded YAML document; every error names ``source`` and a key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        config = SweepConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        raise ConfigError(f"{source}: {_format(first, errors)}") from None
    from runner.strategy import BUILTIN

    if config.search.strategy in BUILTIN:
        _check_strategy(BUILTIN[config.search.strategy], config, source)
    for key in config.hyperparams:
        problem = _hyperparam_name_problem(key)
        if problem:
            raise ConfigError(f"{source}: hyperparams.{key}: {problem}")
    for section in ("hyperparams", "params"):
        try:
            check_space(getattr(config, section), section, schedule_keys=section == "hyperparams")
            if config.search.sampler == "grid":
                grid_space(getattr(config, section), section)
        except (DistributionError, schedules.ScheduleError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return config


def load_config(path: str | os.PathLike, *, check_trainable: bool = True) -> SweepConfig:
    """Read and validate a sweep config file (and, by default, that its trainable imports)."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{source}: {where}invalid YAML ({getattr(exc, 'problem', exc)})") from None
    config = parse_config(data, source)
    if check_trainable:
        check_imports(config, source)
    return config


def check_imports(config: SweepConfig, source: str) -> None:
    """The trainable and the strategy import, and the strategy takes the options given."""
    from runner.context import TrainableError, resolve_trainable
    from runner.strategy import strategy_class

    try:
        resolve_trainable(config.trainable)
    except TrainableError as exc:
        raise ConfigError(f"{source}: trainable: {exc}") from None
    try:
        cls = strategy_class(config.search.strategy)
    except (ImportError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{source}: search.strategy: {config.search.strategy}: {exc}") from None
    problem = strategy_options_problem(cls, config.search.strategy_options)
    if problem:
        raise ConfigError(f"{source}: search.{problem}")
    _check_strategy(cls, config, source)


def _check_strategy(cls: type, config: SweepConfig, source: str) -> None:
    """What the strategy says about the rest of the config (``Strategy.check``)."""
    try:
        cls.check(config)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# What may change between runs of one run dir: how much more to run and on what, not what the
# study searches or how a trial is scored (that would mix two sweeps in one study).
EXTENDABLE = ("search.n_trials", "search.timeout", "max_concurrent", "resources", "retries",
              "max_restarts", "storage_shared", "loggers")


def config_changes(saved: Union[SweepConfig, dict], new: Union[SweepConfig, dict]) -> list[str]:
    """The key paths where ``new`` differs from the ``saved`` config (either one a SweepConfig
    or its ``plain_config``), leaving out the ones a sweep may be extended by (``EXTENDABLE``)."""
    changed: list[str] = []

    def walk(old: Any, now: Any, path: str) -> None:
        if path in EXTENDABLE:
            return
        if isinstance(old, dict) and isinstance(now, dict):
            for key in sorted(set(old) | set(now)):
                walk(old.get(key), now.get(key), f"{path}.{key}" if path else key)
        elif old != now:
            changed.append(path)

    walk(_with_defaults(plain_config(saved)), _with_defaults(plain_config(new)), "")
    return changed


def _with_defaults(data: dict) -> dict:
    """A saved config with the keys a later version added at their defaults: a sweep begun
    before ``fidelity`` existed has not changed it."""
    try:
        return plain_config(SweepConfig.model_validate(data))
    except ValidationError:  # a config this version no longer reads: compared as it is
        return data


def plain_config(config: Union[SweepConfig, dict]) -> dict:
    """The config as JSON data, without its storage (where a run lives is not what it does)."""
    data = config if isinstance(config, dict) else config.model_dump(mode="json")
    return {key: value for key, value in data.items() if key != "storage"}
