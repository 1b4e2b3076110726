"""The Optuna side: storage, sampler and pruner built from the config, and the worker's resources."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional
from urllib.parse import quote, urlsplit, urlunsplit

import optuna

from runner.config import EXTENDABLE, SweepConfig, config_changes, plain_config
from runner.space import grid_space

PASSWORD_VARIABLES = ("SWEEP_DB_PASSWORD", "PGPASSWORD")


def storage_url(url: str) -> str:
    """The RDB URL with the password taken from the environment (never from the config file)."""
    password = next((os.environ[v] for v in PASSWORD_VARIABLES if os.environ.get(v)), None)
    if url.startswith("postgresql://"):  # SQLAlchemy 2.1 would look for psycopg 3; we ship psycopg2
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    parts = urlsplit(url)
    if password is None or not parts.username or parts.password:
        return url
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    netloc = f"{quote(parts.username)}:{quote(password)}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def storage(config: SweepConfig):
    if config.study_storage:
        from sqlalchemy.exc import DBAPIError

        for attempt in range(3):  # drivers starting together race to create Optuna's tables
            try:
                return optuna.storages.RDBStorage(storage_url(config.study_storage),
                                                  engine_kwargs={"pool_pre_ping": True})
            except DBAPIError:
                if attempt == 2:
                    raise
    run_dir = config.run_dir()
    if "://" in run_dir:
        raise ValueError("study_storage: expected an RDB URL when storage is not a local path "
                         "(the default journal file needs a local run dir)")
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "study.journal")
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(path, lock_obj=_JournalFlock(path)))


def _tpe(config: SweepConfig) -> optuna.samplers.BaseSampler:
    import warnings

    with warnings.catch_warnings():  # group and constant_liar are "experimental" since 2020
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=config.search.seed, multivariate=True, group=True,
                                          constant_liar=config.max_concurrent > 1)


def _grid(config: SweepConfig) -> optuna.samplers.BaseSampler:
    space = {**grid_space(config.hyperparams, "hyperparams"), **grid_space(config.params, "params")}
    return optuna.samplers.GridSampler(space, seed=config.search.seed)


SAMPLERS: dict[str, Callable[[SweepConfig], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda c: optuna.samplers.RandomSampler(seed=c.search.seed),
    "cmaes": lambda c: optuna.samplers.CmaEsSampler(seed=c.search.seed,
                                                    warn_independent_sampling=False),
    "gp": lambda c: optuna.samplers.GPSampler(seed=c.search.seed, warn_independent_sampling=False),
    "nsga2": lambda c: optuna.samplers.NSGAIISampler(seed=c.search.seed),
    "qmc": lambda c: optuna.samplers.QMCSampler(seed=c.search.seed,
                                                warn_independent_sampling=False,
                                                warn_asynchronous_seeding=False),
    "grid": _grid,
}
"""search.sampler names; config.py's Literal lists the same keys."""


def _hyperband(config: SweepConfig) -> optuna.pruners.BasePruner:
    p = config.pruner
    return optuna.pruners.HyperbandPruner(
        min_resource=1 if p.min_resource == "auto" else p.min_resource,
        max_resource=config.budget.steps if p.max_resource == "auto" else p.max_resource,
        reduction_factor=p.reduction_factor)


def _halving(config: SweepConfig) -> optuna.pruners.BasePruner:
    p = config.pruner
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource,
                                                  reduction_factor=p.reduction_factor)


PRUNERS: dict[str, Callable[[SweepConfig], optuna.pruners.BasePruner]] = {
    "none": lambda c: optuna.pruners.NopPruner(),
    "median": lambda c: optuna.pruners.MedianPruner(
        n_startup_trials=c.pruner.n_startup_trials, n_warmup_steps=c.pruner.n_warmup_steps,
        interval_steps=c.pruner.interval_steps),
    "percentile": lambda c: optuna.pruners.PercentilePruner(
        c.pruner.percentile, n_startup_trials=c.pruner.n_startup_trials,
        n_warmup_steps=c.pruner.n_warmup_steps, interval_steps=c.pruner.interval_steps),
    "successive_halving": _halving,
    "asha": _halving,
    "hyperband": _hyperband,
}
"""pruner.kind names; config.py's Literal lists the same keys."""


BRANCH = "branch"  # the system attr of a cooldown branch (a fork that scores its parent)


def _trunks_of(kind: type) -> type:
    """A subclass of a study's own class (a Study, or the bracket view HyperbandPruner gives a
    sampler) whose trial lists leave cooldown branches out."""

    class Trunks(kind):
        def _get_trials(self, deepcopy: bool = True, states: Any = None,
                        use_cache: bool = False) -> list[optuna.trial.FrozenTrial]:
            return [t for t in super()._get_trials(deepcopy, states, use_cache)
                    if BRANCH not in t.system_attrs]

        def get_trials(self, deepcopy: bool = True,
                       states: Any = None) -> list[optuna.trial.FrozenTrial]:
            return [t for t in super().get_trials(deepcopy, states)
                    if BRANCH not in t.system_attrs]

    return Trunks


_TRUNKS = _trunks_of(optuna.Study)


def without_branches(study: optuna.Study) -> optuna.Study:
    """The same study (storage, sampler, pruner) whose trials leave cooldown branches out: a
    branch is a measurement of its trunk, not a point of the space, so samplers and pruners
    must not count it (TPE would rank it, without params, among the best)."""
    kind = _TRUNKS if type(study) is optuna.Study else _trunks_of(type(study))
    view = object.__new__(kind)
    # one state: only the trials it lists differ (a bracket view forbids reading __dict__)
    object.__setattr__(view, "__dict__", object.__getattribute__(study, "__dict__"))
    return view


class BranchBlindSampler(optuna.samplers.BaseSampler):
    """The config's sampler, shown the study ``without_branches``."""

    def __init__(self, base: optuna.samplers.BaseSampler) -> None:
        self.base = base

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(without_branches(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(without_branches(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.base.sample_independent(without_branches(study), trial, param_name,
                                            param_distribution)

    def before_trial(self, study, trial):
        self.base.before_trial(without_branches(study), trial)

    def after_trial(self, study, trial, state, values):
        self.base.after_trial(without_branches(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def sampler(config: SweepConfig) -> optuna.samplers.BaseSampler:
    base = SAMPLERS[config.search.sampler](config)
    return BranchBlindSampler(base) if config.fidelity.kind == "cooldown" else base


def pruner(config: SweepConfig) -> optuna.pruners.BasePruner:
    return PRUNERS[config.pruner.kind](config)


def reseed(sampler: optuna.samplers.BaseSampler, seed: Optional[int], number: int) -> None:
    """Make a seeded sampler's draws for trial ``number`` a function of (seed, number, history).

    A resumed driver builds a fresh sampler, whose random streams would start over and repeat
    earlier trials' points; reseeding before each ask keeps a resumed sweep on the sequence the
    uninterrupted one would have drawn. Every random state of the sampler (and of the samplers
    it delegates to, such as TPE's startup RandomSampler) is reseeded.
    """
    if seed is None:
        return
    import numpy as np
    from optuna.samplers._lazy_random_state import LazyRandomState

    state = np.random.SeedSequence([seed, number]).generate_state(1)[0]
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        for value in vars(obj).values():
            if isinstance(value, LazyRandomState):
                value.rng.seed(int(state))
            elif isinstance(value, np.random.RandomState):
                value.seed(int(state))
            elif hasattr(value, "__dict__") and type(value).__module__.startswith("optuna"):
                walk(value, depth + 1)

    walk(sampler, 0)


def open_study(config: SweepConfig) -> optuna.Study:
    """The sweep's study, loaded if it exists (``create_study(load_if_exists=True)`` would append
    a record to the journal even then: a refused resume would not leave it as it was)."""
    directions = [o.direction for o in config.objectives]
    where = storage(config)
    try:
        return optuna.load_study(study_name=config.name, storage=where, sampler=sampler(config),
                                 pruner=pruner(config))
    except KeyError:
        return optuna.create_study(
            study_name=config.name, storage=where, sampler=sampler(config),
            pruner=pruner(config), load_if_exists=True,
            **({"directions": directions} if len(directions) > 1
               else {"direction": directions[0]}))


def delete_study(config: SweepConfig) -> None:
    """Remove the config's study from its storage (one created by mistake)."""
    optuna.delete_study(study_name=config.name, storage=storage(config))


def name_metrics(study: optuna.Study, objectives: list[str]) -> None:
    """Name the study's objectives (optuna-dashboard shows them instead of "Objective 0")."""
    if study.metric_names is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(objectives))


def heartbeat(study: optuna.Study, driver_id: str, stopped: bool = False) -> None:
    """A driver's sign of life, as a study *system* attribute (out of the user attrs people read);
    ``stopped`` says it left cleanly, so its trials resume as 'sweep resumed', not 'driver lost'."""
    import time

    set_study_system_attr(study, f"heartbeat:{driver_id}",
                          {"time": 0.0 if stopped else time.time(), "stopped": stopped})


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    return study._storage.get_study_system_attrs(study._study_id)


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


def heartbeats(study: optuna.Study) -> dict[str, dict]:
    attrs = study_system_attrs(study)
    return {k.removeprefix("heartbeat:"): v for k, v in attrs.items()
            if k.startswith("heartbeat:") and isinstance(v, dict)}


def set_trial_system_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    trial.storage.set_trial_system_attr(trial._trial_id, key, value)


def worker_factory(config: SweepConfig) -> Callable[[Optional[dict]], Any]:
    """Starts a TrialWorker actor with the config's per-trial resources, optionally placed.

    A placement ``{"node": id-or-ip, "soft": bool}`` pins it to a node: hard for ``migrate --to``,
    soft when a handover merely prefers to leave the node it was on.
    """
    import ray

    from runner.worker import TrialWorker

    r = config.resources
    actor = ray.remote(TrialWorker)

    def start(placement: Optional[dict] = None):
        options = {"num_cpus": r.cpu, "num_gpus": r.gpu, "resources": r.custom,
                   "max_concurrency": 4, "max_restarts": 0}
        if placement:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                node_id=resolve_node(placement["node"]), soft=placement.get("soft", False))
        return actor.options(**options).remote()

    return start


def check_unchanged(config: SweepConfig, frozen: optuna.trial.FrozenTrial, specs: dict,
                    plan: Callable[[dict], dict] = lambda specs: specs) -> None:
    """Refuse to resume a trial whose schedules the (edited) config would now build differently
    (``plan``: the strategy's ``plan_schedules``, as the trial's were made)."""
    from runner.space import realize

    fixed = optuna.trial.FixedTrial(frozen.params, number=frozen.number)
    try:
        _, now = realize(config.hyperparams, config.params, fixed)
        now = plan(now)
    except ValueError as exc:
        raise ResumeError(f"trial {frozen.number}: the config no longer fits this trial ({exc})")
    if now != specs:
        changed = sorted(k for k in set(now) | set(specs) if now.get(k) != specs.get(k))
        raise ResumeError(f"trial {frozen.number}: the config changed the schedule of "
                          f"{', '.join(changed)}; refusing to resume it with a different schedule "
                          f"(restore the config or start a new sweep name)")


class _Flock:
    """An exclusive flock on ``path``: the kernel drops it with its process, so a kill -9
    leaves no stale lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._handle: Optional[Any] = None

    def acquire(self) -> bool:
        import fcntl

        handle = open(self.path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle
        return True

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # closing drops the flock


class _JournalFlock(_Flock):
    """The journal's write lock (JournalFileBackend calls acquire/release): Optuna's symlink
    lock outlives a killed driver (the next waits 30 s). The torn line such a kill may leave is
    cut off before the next append, which would corrupt it."""

    def __init__(self, journal: str) -> None:
        super().__init__(journal + ".flock")
        self.journal = journal

    def acquire(self) -> bool:
        super().acquire()
        with open(self.journal, "rb+") as journal:
            size = journal.seek(0, os.SEEK_END)
            if size:
                journal.seek(size - 1)
                if journal.read(1) != b"\n":
                    journal.seek(0)
                    journal.truncate(journal.read().rfind(b"\n") + 1)
        return True


class ResumeError(RuntimeError):
    """A resume would not continue the same trial; the message says why."""


CONFIG_KEY = "config"


def keep_config(study: optuna.Study, config: SweepConfig, run_dir: str) -> None:
    """Refuse a config that changed what the study searches since it began (also the run dir's
    config.yaml edited between runs, which nothing else would notice); else record it. The
    objective may change while no trial has a value of it (a misspelled metric, fixed)."""
    now, saved = plain_config(config), study_system_attrs(study).get(CONFIG_KEY)
    changes = config_changes(saved, now) if saved is not None else []
    if changes and all(c.startswith("objective") for c in changes) and not any(
            t.values or t.intermediate_values for t in study.get_trials(deepcopy=False)):
        changes = []
    if changes:
        raise ResumeError(f"{run_dir}: the config changed {', '.join(changes)} since this sweep "
                          f"began; only {', '.join(EXTENDABLE)} may change (undo the change, or "
                          f"use another name or storage for a new sweep)")
    if saved != now:
        set_study_system_attr(study, CONFIG_KEY, now)


@contextmanager
def ask_lock(study: optuna.Study, run_dir: str) -> Iterator[None]:
    """Serialise 'count the trials, then ask' across drivers sharing the study (no overshoot).

    PostgreSQL: a session advisory lock keyed by the study name; the journal file: an flock beside
    it. Several drivers on one study then stop at exactly ``n_trials`` trials.
    """
    backend = getattr(study._storage, "_backend", study._storage)
    engine = getattr(backend, "engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(study.study_name.encode()).digest()[:8], "big",
                             signed=True)
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        return
    if "://" in run_dir:
        yield
        return
    lock = _Flock(os.path.join(run_dir, "study.ask.lock"))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def resolve_node(node: str) -> str:
    """A node id from a node id (or its prefix) or a node IP; ResumeError if none matches."""
    for info in _alive_nodes():
        if info["NodeID"].startswith(node) or info["NodeManagerAddress"] == node:
            return info["NodeID"]
    raise ResumeError(f"no alive Ray node matches {node!r}")


def _fits(node_resources: dict, resources) -> int:
    """How many trials of ``resources`` one node's total resources hold (-1: unbounded)."""
    asks = {"CPU": resources.cpu, "GPU": resources.gpu, **resources.custom}
    counts = [int(node_resources.get(name, 0.0) // amount + 1e-9)
              for name, amount in asks.items() if amount > 0]
    return min(counts) if counts else -1


def other_node(current: str, resources) -> Optional[dict]:
    """A soft preference for another alive node that can hold a trial (None: there is none)."""
    others = [n["NodeID"] for n in _alive_nodes()
              if n["NodeID"] != current and _fits(n.get("Resources", {}), resources) != 0]
    return {"node": others[0], "soft": True} if others else None


def affinity(placement: Optional[dict], resources) -> Optional[dict]:
    """A lifecycle placement as a worker placement: ``avoid`` a node becomes a soft preference
    for another one (or none when there is no other), a named node stays a hard pin."""
    if not placement:
        return None
    if "avoid" in placement:
        return other_node(placement["avoid"], resources)
    return placement


def capacity(resources, max_concurrent: int, local: bool) -> tuple[int, str]:
    """Trials the cluster can run at once (at most ``max_concurrent``), and a one-line notice
    when that is fewer than asked (the rest queue) or none (the sweep could never start)."""
    nodes = _alive_nodes()
    fits = [_fits(n.get("Resources", {}), resources) for n in nodes]
    if any(f < 0 for f in fits):
        return max_concurrent, ""
    total = sum(fits)
    asked = ", ".join(f"{k} {v:g}" for k, v in {"cpu": resources.cpu, "gpu": resources.gpu,
                                                 **resources.custom}.items() if v)
    if total == 0:
        largest = max(nodes, key=lambda n: n.get("Resources", {}).get("CPU", 0.0), default={})
        have = ", ".join(f"{k} {v:g}" for k, v in sorted(largest.get("Resources", {}).items())
                         if k in ("CPU", "GPU") or k in resources.custom)
        where = "no node of the cluster" if not local else "this machine's Ray"
        wait = "" if local else "; waiting for the cluster to grow"
        return 0, (f"resources: a trial asks for {asked}, which {where} cannot hold "
                   f"(largest node: {have or 'nothing'}){wait}")
    if total < max_concurrent:
        return total, (f"max_concurrent {max_concurrent}: the cluster holds {total} trial"
                       f"{'s' if total > 1 else ''} of {asked} at a time; the others queue")
    return max_concurrent, ""


def check_storage_reachable(config: SweepConfig) -> None:
    """Refuse a local run dir on a cluster whose other hosts cannot read it (unless declared shared).

    Checkpoints are resumed on whatever node has room, so they must be on storage every node sees:
    an object store URI, or a shared filesystem declared with ``storage_shared: true``.
    """
    import ray

    if "://" in config.run_dir() or config.storage_shared:
        return
    here = ray.util.get_node_ip_address()
    hosts = {n["NodeManagerAddress"] for n in _alive_nodes()}
    if hosts - {here}:
        raise ResumeError(
            f"storage: the run dir {config.run_dir()!r} is on this host's local disk, which the "
            f"cluster's other hosts ({', '.join(sorted(hosts - {here}))}) cannot read; use an "
            f"s3:// or gs:// URI, or a shared filesystem with storage_shared: true")
