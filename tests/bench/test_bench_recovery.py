"""Recovery after losing a node or getting a spot notice: this runner against Ray Tune (issue 5).

Run by `make bench`. Each way of losing the trial (``GROUPS``: node removed, node killed,
SIGTERM) runs in a fresh process with its own ``ray.cluster_utils.Cluster`` on this machine, and
each repetition in it runs this runner and Ray Tune in turn (alternating which goes first), so
both see the same machine load. The cluster: a head (1 CPU, 0 GPU) and two worker nodes that
declare 2 CPUs and 1 GPU each, with the health-check settings of tests/test_multinode.py
(``HEALTH_CHECK`` below). One trial asks for 1 CPU + 1 GPU, so it runs on a worker node (on the
CPU). The trainable (tests/bench/recovery_trainables.py) does one real AdamW update of the
digits MLP per step padded to ``STEP_S`` per step, reports after every step and checkpoints every
``CHECKPOINT_EVERY`` steps; ``STEPS`` steps in all.

Scenarios (``REPS`` repetitions each, medians reported; each repetition starts from two idle
GPU nodes, a removed node being replaced first):

- ``runner_node``: this runner (``Sweep(config).run()``, a median pruner that never prunes, so
  every report waits for the driver as Tune's ``tune.report`` does, and the loss lands on time).
  When the driver gets the report of step ``LOSS_STEP`` (``on_event("report")``), the worker
  node running the trial (``on_event("placed")``'s node id) is removed with
  ``Cluster.remove_node`` (graceful: the raylet gets SIGTERM, as in tests/test_multinode.py).
- ``runner_node_abrupt``: a vanished machine: the node removed with
  ``remove_node(allow_graceful=False)`` (SIGKILL: the raylet says nothing, GCS notices by its
  health check), then the trial's process frozen (SIGSTOP). Without the freeze, the worker
  process outlives its raylet on one machine and keeps training and checkpointing until the node
  is declared dead.
- ``runner_sigterm``: SIGTERM to the trial's worker process at the report of ``LOSS_STEP``
  (the spot notice; tests/test_preemption.py's ``Signaller``).
- ``tune_node`` / ``tune_node_abrupt``: Ray Tune, a ``Tuner`` over
  ``tune.with_resources(trainable, {"cpu": 1, "gpu": 1})`` with
  ``RunConfig(storage_path=<tmp>, failure_config=FailureConfig(max_failures=3))``; the trainable
  checkpoints through ``tune.report(metrics, checkpoint=Checkpoint.from_directory(...))`` and
  reports ``ray.get_runtime_context().get_node_id()``; a ``tune.Callback.on_trial_result`` removes
  that node at step ``LOSS_STEP``, graceful or abrupt as above.

Measured, in the driver process, on ``time.monotonic()``:
- ``back_s``: from just before ``remove_node`` (or ``os.kill``) to the driver receiving the
  trial's first report from its new placement (runner: the first ``report`` event after a
  ``placed`` event on another node or process; Tune: the first result with another pid), and
  ``back_after_return_s`` the same from ``remove_node`` returning; with the milestones between
  (``detected_s``: runner ``restarted`` event / Tune ``on_trial_recover``; ``placed_s``: runner
  ``placed`` event, i.e. the new worker started and the checkpoint opened).
- ``lost_steps``: the last step reported before the loss (the step whose report triggered it)
  minus the checkpoint step the trial resumed from (runner: the ``restarted`` event's
  ``from_step``, cross-checked with the trial's ``restart_log``; Tune: the ``start_step`` the
  restored trainable reports); ``redone_steps``: the highest step the lost incarnation reported
  at all minus that checkpoint step.

Prints a table and writes ``bench-out/recovery.json``. Targets (printed, not asserted): back
within ``TARGET_BACK_S`` of the loss (node removal, runner); zero lost steps with SIGTERM.
``SWEEP_BENCH_RECOVERY_REPS`` changes the repetitions, ``SWEEP_BENCH_RECOVERY_ONLY`` picks
groups (comma-separated: node, node_abrupt, sigterm).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench-out"
LOGS = OUT / "recovery-logs"
TRAINABLES = "tests.bench.recovery_trainables"
REPS = int(os.environ.get("SWEEP_BENCH_RECOVERY_REPS", "3"))
STEPS = 200
STEP_S = 0.05
CHECKPOINT_EVERY = 20
LOSS_STEP = 50  # mid-interval: the last checkpoint before it is step 40
TARGET_BACK_S = 10.0
SCENARIO_TIMEOUT_S = 1200
HEALTH_CHECK = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                "health_check_failure_threshold": 4}
HEAD = {"num_cpus": 1, "num_gpus": 0}
WORKER = {"num_cpus": 2, "num_gpus": 1}

# One process (and one fresh Cluster) per way of losing the trial; in it, each repetition runs
# every system in turn (the order alternating), so both see the same machine load.
GROUPS = {
    "node": {"loss": "node", "graceful": True, "systems": ["runner", "tune"], "probe": True},
    "node_abrupt": {"loss": "node", "graceful": False, "systems": ["runner", "tune"]},
    "sigterm": {"loss": "sigterm", "systems": ["runner"]},
}
LABELS = {
    "runner_node": "this runner, node removed",
    "runner_node_abrupt": "this runner, node vanished",
    "runner_sigterm": "this runner, SIGTERM to worker",
    "tune_node": "Ray Tune, node removed",
    "tune_node_abrupt": "Ray Tune, node vanished",
}


# --- the cluster (in the group's process) ----------------------------------------------------

def _start_cluster():
    import ray
    from ray.cluster_utils import Cluster

    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        HEAD, include_dashboard=False, _system_config=HEALTH_CHECK))
    for _ in range(2):
        cluster.add_node(**WORKER)
    ray.init(address=cluster.address, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO)] + sys.path)}})
    cluster.wait_for_nodes()
    return cluster, time.monotonic() - started


def _restore_nodes(cluster) -> None:
    """Back to two idle GPU nodes for the next repetition (a removed node is replaced)."""
    import ray

    while len(cluster.worker_nodes) < 2:
        cluster.add_node(**WORKER)
    cluster.wait_for_nodes()
    gc.collect()  # the finished sweep's idle workers go with their handles
    deadline = time.monotonic() + 60
    while ray.available_resources().get("GPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)


_FROZEN: list[int] = []  # trial processes stopped by an abrupt loss, killed after the repetition


def _remove(cluster, node_id: str, graceful: bool, pid: int) -> tuple[float, float]:
    """Lose the node running the trial; returns monotonic times before and after.

    Graceful: ``Cluster.remove_node`` (the raylet gets SIGTERM, stops its workers and tells GCS).
    Abrupt, a vanished machine: the node's Ray processes get SIGKILL (``allow_graceful=False``),
    so GCS learns it from its health check, and right after, the trial's process is frozen
    (SIGSTOP: no more steps, and its connections neither answer nor close, as with a host that is
    gone). On one machine the worker would otherwise outlive its raylet and keep training and
    checkpointing until the node is declared dead. The freeze comes second because the kernel
    sends SIGCONT to a stopped process whose process group the raylet's death orphans.
    """
    victim = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    before = time.monotonic()
    cluster.remove_node(victim, allow_graceful=graceful)
    if not graceful:
        try:
            os.kill(pid, signal.SIGSTOP)
            _FROZEN.append(pid)
        except ProcessLookupError:
            pass
    return before, time.monotonic()


def _reap_frozen() -> None:
    while _FROZEN:
        pid = _FROZEN.pop()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- this runner ---------------------------------------------------------------------------------

def _runner_config(run_dir: str):
    from runner.config import parse_config

    return parse_config({
        "name": "recovery",
        "trainable": f"{TRAINABLES}:runner_paced",
        "objective": {"metric": "val_loss"},
        "budget": {"steps": STEPS, "report_every": 1, "checkpoint_every": CHECKPOINT_EVERY},
        "search": {"sampler": "random", "seed": 0, "n_trials": 1},
        # never prunes, but every report waits for the driver (like tune.report): on-time losses
        "pruner": {"kind": "median", "n_startup_trials": 1000},
        "hyperparams": {
            "learning_rate": {"kind": "warmup_cosine_decay", "init_value": 0.0,
                              "peak_value": {"loguniform": [3e-3, 1e-2]}, "warmup_steps": 15,
                              "decay_steps": STEPS, "end_value": 1e-5},
        },
        "params": {"width": 32, "step_s": STEP_S},
        "resources": {"cpu": 1, "gpu": 1},
        "max_concurrent": 1,
        "storage": run_dir,
    }, "bench-recovery")


def runner_rep(cluster, spec: dict, work: str) -> dict:
    from runner.driver import Sweep
    from runner.records import RunRecords

    placed: list[tuple[float, dict]] = []
    reports: list[tuple[float, int, int, dict]] = []  # (time, step, placement index, metrics)
    restarted: list[tuple[float, int]] = []
    loss: dict = {}

    def on_event(kind: str, info: dict) -> None:
        now = time.monotonic()
        if kind == "placed":
            placed.append((now, info))
        elif kind == "restarted":
            restarted.append((now, info["from_step"]))
        elif kind == "report":
            reports.append((now, info["step"], len(placed) - 1, info["metrics"]))
            if info["step"] >= LOSS_STEP and not loss:
                where = placed[-1][1]
                loss.update(step=info["step"], placement=len(placed) - 1,
                            node_id=where["node_id"], pid=where["pid"])
                loss["wall0"] = time.time()
                if spec["loss"] == "node":
                    loss["t0"], loss["t1"] = _remove(cluster, where["node_id"], spec["graceful"],
                                                     where["pid"])
                else:
                    loss["t0"] = time.monotonic()
                    os.kill(where["pid"], signal.SIGTERM)
                    loss["t1"] = time.monotonic()

    run_dir = os.path.join(work, "run")
    config = _runner_config(run_dir)
    t_start = time.monotonic()
    sweep = Sweep(config, on_event=on_event)
    summary = sweep.run()
    total = time.monotonic() - t_start
    del sweep
    trial = RunRecords(run_dir).read("trials").to_pylist()[0]
    log = json.loads(trial["restart_log"] or "[]")
    if not loss:
        raise RuntimeError("the trial never reached the loss step")
    old = loss["placement"]
    moved = next((i for i in range(old + 1, len(placed))
                  if placed[i][1]["pid"] != loss["pid"]
                  and (spec["loss"] != "node" or placed[i][1]["node_id"] != loss["node_id"])), None)
    if moved is None or not restarted or not log:
        raise RuntimeError(f"no recovery seen: placed={placed} restarted={restarted} log={log}")
    t_back, first = next((t, m) for t, _, p, m in reports if p >= moved)
    from_step = restarted[0][1]
    if log[0]["from_step"] != from_step:
        raise RuntimeError(f"restart_log says from_step {log[0]['from_step']}, event {from_step}")
    redone = max(s for _, s, p, _ in reports if p == old) - from_step
    return {
        "loss_step": loss["step"], "from_step": from_step,
        "lost_steps": max(0, loss["step"] - from_step), "redone_steps": max(0, redone),
        "back_s": t_back - loss["t0"], "back_after_return_s": t_back - loss["t1"],
        "loss_call_s": loss["t1"] - loss["t0"],
        "detected_s": restarted[0][0] - loss["t0"], "placed_s": placed[moved][0] - loss["t0"],
        "entered_s": first.get("t_entered", float("nan")) - loss["wall0"],
        "ready_s": first.get("t_ready", float("nan")) - loss["wall0"],
        "from_node": loss["node_id"], "to_node": placed[moved][1]["node_id"],
        "restart_log": log, "state": trial["state"], "last_step": trial["last_step"],
        "states": summary.counts, "trial_s": total,
        "cold_start_s": reports[0][0] - t_start,
    }


# --- Ray Tune -------------------------------------------------------------------------------------

def _tune_watch():
    """A Tune callback that records results and removes the trial's node at ``LOSS_STEP``.

    Tune pickles its callbacks into the experiment state: the instance pickles as empty (the
    cluster handle holds locks), the live one in this process keeps its records.
    """
    from ray import tune

    class Watch(tune.Callback):
        def __init__(self, cluster, spec):
            self.cluster, self.spec = cluster, spec
            self.results, self.recovered, self.errors, self.loss = [], [], [], {}

        def __getstate__(self):
            return {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results.append((time.monotonic(), dict(result)))
            if result["step"] >= LOSS_STEP and not self.loss:
                self.loss.update(step=result["step"], node_id=result["node_id"],
                                 pid=result["pid"], wall0=time.time())
                self.loss["t0"], self.loss["t1"] = _remove(self.cluster, result["node_id"],
                                                           self.spec["graceful"], result["pid"])

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.recovered.append(time.monotonic())

        def on_trial_error(self, iteration, trials, trial, **info):
            self.errors.append(time.monotonic())

    return Watch


def tune_rep(cluster, spec: dict, work: str) -> dict:
    from ray import tune

    from tests.bench import recovery_trainables

    watch = _tune_watch()(cluster, spec)
    results, recovered, errors, loss = watch.results, watch.recovered, watch.errors, watch.loss

    trainable = tune.with_resources(recovery_trainables.tune_paced, {"cpu": 1, "gpu": 1})
    tuner = tune.Tuner(
        trainable,
        param_space={"steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "step_s": STEP_S,
                     "width": 32, "lr": 5e-3, "seed": 0},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(name="recovery", storage_path=os.path.join(work, "tune"),
                                  failure_config=tune.FailureConfig(max_failures=3),
                                  verbose=0, callbacks=[watch]))
    t_start = time.monotonic()
    grid = tuner.fit()
    total = time.monotonic() - t_start
    if not loss:
        raise RuntimeError("the trial never reached the loss step")
    after = [(t, r) for t, r in results if t > loss["t0"] and r["pid"] != loss["pid"]]
    if not after:
        raise RuntimeError(f"no report after the loss; errors={grid.errors}")
    t_back, first = after[0]
    before = [r["step"] for t, r in results if r["pid"] == loss["pid"]]
    final = grid[0].metrics or {}
    return {
        "loss_step": loss["step"], "from_step": first["start_step"],
        "lost_steps": max(0, loss["step"] - first["start_step"]),
        "redone_steps": max(0, max(before) - first["start_step"]),
        "back_s": t_back - loss["t0"], "back_after_return_s": t_back - loss["t1"],
        "loss_call_s": loss["t1"] - loss["t0"],
        "detected_s": (recovered[0] - loss["t0"]) if recovered else None,
        "error_seen_s": (errors[0] - loss["t0"]) if errors else None,
        "placed_s": None,
        "entered_s": first["t_entered"] - loss["wall0"],
        "ready_s": first["t_ready"] - loss["wall0"],
        "from_node": loss["node_id"], "to_node": first["node_id"],
        "state": "ERROR" if grid.errors else "TERMINATED", "last_step": final.get("step"),
        "errors": [repr(e)[:500] for e in grid.errors], "trial_s": total,
        "cold_start_s": results[0][0] - t_start,
    }


# --- what a restart costs before the trainable runs ---------------------------------------------

class _Empty:
    def ping(self) -> int:
        return os.getpid()


def probe_actor_start(n: int = 3) -> dict:
    """Seconds to a first answer from a fresh GPU actor on an idle cluster: an empty class (Ray's
    floor: a new worker process) and this runner's ``TrialWorker`` (``where()``: the process plus
    the runner's imports), each started ``n`` times; medians."""
    import ray

    from runner.worker import TrialWorker

    def timed(cls, method: str) -> float:
        started = time.monotonic()
        actor = ray.remote(cls).options(num_cpus=1, num_gpus=1).remote()
        ray.get(getattr(actor, method).remote())
        elapsed = time.monotonic() - started
        ray.kill(actor)
        return elapsed

    empty = [timed(_Empty, "ping") for _ in range(n)]
    worker = [timed(TrialWorker, "where") for _ in range(n)]
    return {"empty_actor_s": statistics.median(empty), "trial_worker_s": statistics.median(worker),
            "empty_actor_all": empty, "trial_worker_all": worker}


# --- one group, in its own process ---------------------------------------------------------------

def _scenario_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from runner.ray_init import advertise_loopback

    advertise_loopback()  # before anything imports ray: the cluster talks over 127.0.0.1
    spec = json.loads(args.group)
    import ray

    cluster, cluster_s = _start_cluster()
    reps = {system: [] for system in spec["systems"]}
    failures = {system: [] for system in spec["systems"]}
    probe = None
    try:
        for i in range(spec["reps"]):
            order = spec["systems"] if i % 2 == 0 else spec["systems"][::-1]
            for system in order:
                _restore_nodes(cluster)
                work = tempfile.mkdtemp(prefix=f"bench-recovery-{system}-")
                try:
                    rep = {"runner": runner_rep, "tune": tune_rep}[system](cluster, spec, work)
                    rep["load_1min"] = os.getloadavg()[0]
                    reps[system].append(rep)
                    print(f"{system} rep {i}: {json.dumps(rep)}", flush=True)
                except Exception as exc:  # a failed repetition is recorded, the others still run
                    import traceback

                    traceback.print_exc()
                    failures[system].append(f"{type(exc).__name__}: {exc}"[:2000])
                finally:
                    _reap_frozen()
                    shutil.rmtree(work, ignore_errors=True)
        if spec.get("probe"):
            try:
                _restore_nodes(cluster)
                probe = probe_actor_start()
                print(f"probe: {json.dumps(probe)}", flush=True)
            except Exception as exc:  # noqa: BLE001 - a side measurement
                failures["runner"].append(f"actor start probe: {type(exc).__name__}: {exc}"[:2000])
    finally:
        ray.shutdown()
        cluster.shutdown()
    Path(args.out).write_text(json.dumps({"cluster_start_s": cluster_s, "reps": reps,
                                          "failures": failures, "actor_start": probe}))


# --- the benchmark -------------------------------------------------------------------------------

MEDIAN_KEYS = ("back_s", "back_after_return_s", "loss_call_s", "detected_s", "placed_s",
               "entered_s", "ready_s", "cold_start_s", "lost_steps", "redone_steps", "from_step",
               "loss_step", "load_1min")


def _run_group(group: str, spec: dict) -> dict:
    """Runs one group's process; returns its scenarios as ``{"runner_node": {...}, ...}``."""
    LOGS.mkdir(parents=True, exist_ok=True)
    result_path = LOGS / f"{group}.json"
    result_path.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    print(f"[bench recovery] {group}: {spec}", flush=True)
    load_before = os.getloadavg()[0]
    with open(LOGS / f"{group}.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, __file__, "--group", json.dumps(spec), "--out", str(result_path)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=SCENARIO_TIMEOUT_S)
    if proc.returncode != 0 or not result_path.exists():
        tail = (LOGS / f"{group}.log").read_text()[-4000:]
        raise RuntimeError(f"group {group} failed (exit {proc.returncode}):\n{tail}")
    out = json.loads(result_path.read_text())
    scenarios = {}
    for system in spec["systems"]:
        name = f"{system}_{group}"
        reps = out["reps"][system]
        scenario = {k: v for k, v in spec.items() if k not in ("systems", "probe")}
        scenario.update(system=system, reps=reps, failures=out["failures"][system],
                        cluster_start_s=out["cluster_start_s"],
                        load_1min_before=load_before, load_1min_after=os.getloadavg()[0],
                        median={k: _median([r.get(k) for r in reps]) for k in MEDIAN_KEYS})
        if system == "runner" and out.get("actor_start"):
            scenario["actor_start"] = out["actor_start"]
        m = scenario["median"]
        print(f"[bench recovery] {name}: {len(reps)} reps, back {_fmt(m['back_s'])} s, "
              f"lost {_fmt(m['lost_steps'], 0)} steps, failures {len(scenario['failures'])}",
              flush=True)
        scenarios[name] = scenario
    return scenarios


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _machine() -> dict:
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
        mem_gb = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    import optuna
    import ray

    return {"cpus": os.cpu_count(), "memory_gib": mem_gb, "platform": platform.platform(),
            "python": platform.python_version(), "ray": ray.__version__,
            "optuna": optuna.__version__}


def test_bench_recovery():
    only = {s for s in os.environ.get("SWEEP_BENCH_RECOVERY_ONLY", "").split(",") if s}
    chosen = {n: dict(s, reps=REPS) for n, s in GROUPS.items() if not only or n in only}
    results = {}
    for group, spec in chosen.items():
        try:
            results.update(_run_group(group, spec))
        except Exception as exc:  # noqa: BLE001 - report the others; the error goes in the JSON
            print(f"[bench recovery] {group} failed: {exc}", flush=True)
            for system in spec["systems"]:
                results[f"{system}_{group}"] = dict(spec, system=system, reps=[],
                                                    failures=[str(exc)[-4000:]], median={})

    print()
    print(f"recovery benchmark: 1 trial (1 CPU + 1 GPU), {STEPS} steps x {STEP_S * 1000:.0f} ms, "
          f"report every step, checkpoint every {CHECKPOINT_EVERY} steps "
          f"({CHECKPOINT_EVERY * STEP_S:.1f} s), loss at step {LOSS_STEP}; "
          f"Cluster head + 2 x {WORKER}, {HEALTH_CHECK}; medians of {REPS}")
    print(f"{'scenario':36} {'reps':>4} {'back s':>7} {'after ret':>9} {'call s':>7} "
          f"{'detect s':>8} {'placed s':>8} {'entered':>7} {'ready s':>7} {'lost':>5} "
          f"{'redone':>6} {'from':>5} {'cold s':>6} {'load':>5}")
    for name, label in LABELS.items():
        if name not in results:
            continue
        r, m = results[name], results[name]["median"]
        print(f"{label:36} {len(r['reps']):>4} {_fmt(m.get('back_s')):>7} "
              f"{_fmt(m.get('back_after_return_s')):>9} {_fmt(m.get('loss_call_s')):>7} "
              f"{_fmt(m.get('detected_s')):>8} {_fmt(m.get('placed_s')):>8} "
              f"{_fmt(m.get('entered_s')):>7} {_fmt(m.get('ready_s')):>7} "
              f"{_fmt(m.get('lost_steps'), 0):>5} {_fmt(m.get('redone_steps'), 0):>6} "
              f"{_fmt(m.get('from_step'), 0):>5} {_fmt(m.get('cold_start_s')):>6} "
              f"{_fmt(m.get('load_1min'), 1):>5}"
              + (f"  ({len(r['failures'])} failed)" if r["failures"] else ""))

    print("columns: back = loss -> first report from the new placement; after ret = the same "
          "from remove_node returning; call = remove_node / os.kill itself; detect = runner "
          "'restarted' event / Tune on_trial_recover; placed = runner 'placed' event (new worker "
          "up, checkpoint opened); entered / ready = the trainable called / its imports, data, "
          "model and restore done; lost = reported step at the loss - resumed step; redone = "
          "highest step the lost incarnation reported - resumed step; cold = the trial's first "
          "report after the run started (no failure); load = 1-min load average after a rep")
    probe = results.get("runner_node", {}).get("actor_start")
    if probe:
        print(f"fresh GPU actor to first answer, idle cluster (medians of 3): empty class "
              f"{probe['empty_actor_s']:.2f} s, runner TrialWorker.where() "
              f"{probe['trial_worker_s']:.2f} s")

    targets = {}
    for name in ("runner_node", "runner_node_abrupt"):
        back = [rep["back_s"] for rep in results.get(name, {}).get("reps", [])]
        if back:
            value = statistics.median(back)
            targets[f"{name}_back_s"] = {"value": value, "worst": max(back),
                                         "target": TARGET_BACK_S, "met": value <= TARGET_BACK_S,
                                         "met_every_rep": max(back) <= TARGET_BACK_S}
    lost = [rep["lost_steps"] for rep in results.get("runner_sigterm", {}).get("reps", [])]
    if lost:
        targets["runner_sigterm_lost_steps"] = {"value": statistics.median(lost),
                                                "worst": max(lost), "target": 0,
                                                "met": max(lost) == 0,
                                                "met_every_rep": max(lost) == 0}
    for name, t in targets.items():
        print(f"target {name}: median {t['value']:.2f}, worst {t['worst']:.2f} (target <= "
              f"{t['target']:g}): {'met' if t['met'] else 'NOT met'}"
              f"{'' if t['met_every_rep'] else ' (not in every repetition)'}")

    OUT.mkdir(exist_ok=True)
    (OUT / "recovery.json").write_text(json.dumps({
        "machine": _machine(), "reps": REPS, "steps": STEPS, "step_s": STEP_S,
        "report_every": 1, "checkpoint_every": CHECKPOINT_EVERY,
        "checkpoint_interval_s": CHECKPOINT_EVERY * STEP_S, "loss_step": LOSS_STEP,
        "cluster": {"head": HEAD, "workers": [WORKER, WORKER], "system_config": HEALTH_CHECK},
        "trial_resources": {"cpu": 1, "gpu": 1}, "scenarios": results, "targets": targets},
        indent=2, default=str))
    assert any(r["reps"] for r in results.values()), "no scenario ran"


if __name__ == "__main__":
    _scenario_main(sys.argv[1:])
