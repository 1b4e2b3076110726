"""Per-trial and per-report overhead of the runner, against Ray Tune and plain Optuna (issue 4).

Run by `make bench`. 200 trials of a trainable that only reports (10 reports per trial), 2
concurrent, on a local Ray (127.0.0.1, no dashboard, Ray's default CPU count: this machine's), one
TPE sampler for everybody (the runner's own: ``runner.study.sampler``, seed 0, multivariate, group,
constant liar):

- this runner: ``Sweep(config).run()``, pruner none, then a median pruner (every report then
  waits for the driver's decision). Budget: steps=10, report_every=1, checkpoint_every=10; the
  runner skips the checkpoint at the final step, so no checkpoint is ever written (no checkpoint
  I/O is timed). Records (trials/history/applied Parquet) and the journal-file study are written
  as in any run.
- loggers: the runner scenario with TensorBoard, and with TensorBoard + MLflow (a SQLite store,
  written by the loggers' process); then 60 trials that wait 50 ms per step (0.5 s, the CPU idle
  meanwhile, as on a GPU node) without and with TensorBoard + MLflow. The loggers' process is
  started before the clock (its imports); the sweep is timed until every event is sent.
- per report: 20 trials with 1000 reports each against 20 trials with 10, with the pruner off and
  with a median pruner over a flat loss (nothing is pruned, every report waits for a decision).
  Two estimates: the wall-time difference divided by the extra reports (20 * 990), and the same
  from steady-state trial intervals (workers' start-up left out: it varies by seconds between
  identical 20-trial runs on a busy machine, so the target is judged on this one). Both are
  amortised over two concurrent trials; a trial itself is slowed by about twice that.
- Ray Tune: ``Tuner`` + ``OptunaSearch`` (the same sampler), ``max_concurrent_trials=2``, a function
  trainable reporting 10 times with ``tune.report``, storage in a temp dir, Tune's defaults
  otherwise (``reuse_actors=False``); and once more with ``reuse_actors=True``.
- plain Optuna: ``study.optimize(objective, n_trials=200, n_jobs=2)``, in-memory storage (the
  floor), and with the journal file the runner uses by default.

Every scenario runs in a fresh process with its own Ray, so none inherits another's workers. Timed:
from building the sweep (``Sweep(...)``, ``Tuner(...)``, ``create_study``) to the end of the run,
Ray's start excluded (reported apart). "steady" is the time between trial completions once
started (last ~90% of trials), i.e. without the first workers' start-up. Prints a table and writes
``bench-out/runner.json``; targets (<= 50 ms per trial, >= 30x faster than Ray Tune, <= 100 us per
report) are reported, not asserted; a scenario whose trials failed fails the test (its figures
would time nothing). Each scenario's 1-minute load average before and after is recorded (the
benchmark's own processes count in it), and the git commit and modified runner files. ``SWEEP_BENCH_TRIALS`` scales the 200, ``SWEEP_BENCH_ONLY``
picks scenarios (comma-separated names) for a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench-out"
LOGS = OUT / "runner-logs"
TRAINABLES = "tests.bench.bench_trainables"
SEED = 0
CONCURRENT = 2
TRIALS = int(os.environ.get("SWEEP_BENCH_TRIALS", "200"))
REPORT_TRIALS = 20
WAITING_TRIALS = 60
FEW, MANY = 10, 1000
TARGET_TRIAL_MS = 50.0
TARGET_SPEEDUP = 30.0
TARGET_REPORT_US = 100.0
TARGET_LOGGING_OVERHEAD = 0.05  # runner_loggers against runner, per trial
SCENARIO_TIMEOUT_S = 1500

SCENARIOS = {
    "optuna": {"kind": "optuna", "trials": TRIALS, "reports": FEW, "storage": "memory"},
    "optuna_journal": {"kind": "optuna", "trials": TRIALS, "reports": FEW, "storage": "journal"},
    "runner": {"kind": "runner", "trials": TRIALS, "reports": FEW, "pruner": "none",
               "trainable": "trivial"},
    "runner_median": {"kind": "runner", "trials": TRIALS, "reports": FEW, "pruner": "median",
                      "trainable": "trivial"},
    # the runner scenario with loggers: TensorBoard alone, then with MLflow (a SQLite store in
    # the work dir, written from the driver's process: the worst case for the driver's CPU)
    "runner_tensorboard": {"kind": "runner", "trials": TRIALS, "reports": FEW, "pruner": "none",
                           "trainable": "trivial", "loggers": ["tensorboard"]},
    "runner_loggers": {"kind": "runner", "trials": TRIALS, "reports": FEW, "pruner": "none",
                       "trainable": "trivial", "loggers": ["tensorboard", "mlflow"]},
    # the same with trials of 0.5 s that leave the CPU idle (GPU-like): what loggers cost there
    "runner_waiting": {"kind": "runner", "trials": WAITING_TRIALS, "reports": FEW, "pruner": "none",
                       "trainable": "waiting"},
    "runner_waiting_loggers": {"kind": "runner", "trials": WAITING_TRIALS, "reports": FEW,
                               "pruner": "none", "trainable": "waiting",
                               "loggers": ["tensorboard", "mlflow"]},
    "reports_few": {"kind": "runner", "trials": REPORT_TRIALS, "reports": FEW, "pruner": "none",
                    "trainable": "flat"},
    "reports_many": {"kind": "runner", "trials": REPORT_TRIALS, "reports": MANY, "pruner": "none",
                     "trainable": "flat"},
    "reports_few_median": {"kind": "runner", "trials": REPORT_TRIALS, "reports": FEW,
                           "pruner": "median", "trainable": "flat"},
    "reports_many_median": {"kind": "runner", "trials": REPORT_TRIALS, "reports": MANY,
                            "pruner": "median", "trainable": "flat"},
    "tune": {"kind": "tune", "trials": TRIALS, "reports": FEW, "reuse_actors": False},
    "tune_reuse": {"kind": "tune", "trials": TRIALS, "reports": FEW, "reuse_actors": True},
}
LABELS = {
    "runner": "this runner, pruner none",
    "runner_median": "this runner, median pruner",
    "runner_tensorboard": "this runner, TensorBoard logger",
    "runner_loggers": "this runner, TensorBoard + MLflow",
    "runner_waiting": "this runner, 0.5 s trials (CPU idle)",
    "runner_waiting_loggers": "  the same, TensorBoard + MLflow",
    "tune": "Ray Tune + OptunaSearch",
    "tune_reuse": "Ray Tune, reuse_actors=True",
    "optuna": "optuna n_jobs=2 (in-memory)",
    "optuna_journal": "optuna n_jobs=2 (journal file)",
}


# --- the scenarios (each in its own process) ----------------------------------------------------

def _config(spec: dict, storage: str):
    from runner.config import parse_config

    reports = spec["reports"]
    pruner = ({"kind": "median", "n_startup_trials": 5} if spec.get("pruner") == "median"
              else {"kind": "none"})
    return parse_config({
        "name": "bench",
        "trainable": f"{TRAINABLES}:{spec.get('trainable', 'trivial')}",
        "objective": {"metric": "loss", "direction": "minimize"},
        "budget": {"steps": reports, "report_every": 1, "checkpoint_every": reports},
        "search": {"sampler": "tpe", "seed": SEED, "n_trials": spec["trials"]},
        "pruner": pruner,
        "hyperparams": {"learning_rate": {"kind": "constant", "value": {"loguniform": [1e-6, 1.0]}}},
        "resources": {"cpu": 1},
        "max_concurrent": CONCURRENT,
        "storage": storage,
        "seed": SEED,
        "loggers": [{"kind": "mlflow", "options": {"tracking_uri": f"sqlite:///{storage}.mlflow.db"}}
                    if kind == "mlflow" else kind for kind in spec.get("loggers", [])],
    }, "bench-runner")


def _steady(done: list[float]) -> float | None:
    """Seconds per trial between completions, leaving out the first ~10% (workers starting)."""
    done = sorted(done)
    skip = max(2, len(done) // 10)
    if len(done) - skip < 2:
        return None
    return (done[-1] - done[skip]) / (len(done) - 1 - skip)


def run_runner(spec: dict, work: str) -> dict:
    from runner.ray_init import ray_session

    started = time.perf_counter()
    with ray_session():
        init_s = time.perf_counter() - started
        from runner.driver import Sweep
        from runner.records import RunRecords

        config = _config(spec, os.path.join(work, "run"))
        done: list[float] = []

        def on_event(kind: str, info: dict) -> None:
            if kind == "finished":
                done.append(time.perf_counter())

        from runner.loggers import Loggers

        # starting the loggers' process (imports, MLflow creating its tables) is not timed;
        # sending is
        fanout = Loggers(config, config.run_dir()).start()

        def logged(kind: str, info: dict) -> None:
            fanout(kind, info)
            on_event(kind, info)

        t0 = time.perf_counter()
        summary = Sweep(config, on_event=logged).run()
        fanout.__exit__(None, None, None)  # every event sent
        total = time.perf_counter() - t0
    records = RunRecords(config.run_dir())
    errors = [e for e in records.read("trials").column("error").to_pylist() if e]
    return {"total_s": total, "steady_s_per_trial": _steady(done), "ray_init_s": init_s,
            "states": summary.counts, "reports_recorded": records.read("history").num_rows,
            "first_error": errors[0] if errors else None}


def run_tune(spec: dict, work: str) -> dict:
    from runner.ray_init import ray_session

    started = time.perf_counter()
    with ray_session():
        init_s = time.perf_counter() - started
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        from runner import study as study_lib
        from tests.bench import bench_trainables

        done: list[float] = []

        class Completions(tune.Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                done.append(time.perf_counter())

        sampler = study_lib.sampler(_config(spec, work))
        t0 = time.perf_counter()
        search = OptunaSearch(space=bench_trainables.tune_space, metric="loss", mode="min",
                              sampler=sampler)
        tuner = tune.Tuner(
            bench_trainables.tune_trivial,
            tune_config=tune.TuneConfig(search_alg=search, num_samples=spec["trials"],
                                        max_concurrent_trials=CONCURRENT,
                                        reuse_actors=spec["reuse_actors"]),
            run_config=tune.RunConfig(name="bench", storage_path=os.path.join(work, "tune"),
                                      verbose=0, callbacks=[Completions()]))
        results = tuner.fit()
        total = time.perf_counter() - t0
        iterations = [r.metrics.get("training_iteration", 0) for r in results]
        errors = [str(r.error) for r in results if r.error]
    return {"first_error": errors[0] if errors else None,
            "total_s": total, "steady_s_per_trial": _steady(done), "ray_init_s": init_s,
            "states": {"COMPLETE": len(results) - results.num_errors, "FAIL": results.num_errors},
            "reports_recorded": int(sum(iterations))}


def run_optuna(spec: dict, work: str) -> dict:
    import optuna

    from runner import study as study_lib
    from tests.bench import bench_trainables

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = _config(spec, work)
    t0 = time.perf_counter()
    storage = None
    if spec["storage"] == "journal":
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
            os.path.join(work, "study.journal")))
    study = optuna.create_study(direction="minimize", storage=storage,
                                sampler=study_lib.sampler(config))
    study.optimize(lambda t: bench_trainables.optuna_objective(t, spec["reports"]),
                   n_trials=spec["trials"], n_jobs=CONCURRENT)
    total = time.perf_counter() - t0
    trials = study.get_trials(deepcopy=False)
    done = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return {"first_error": None, "total_s": total, "steady_s_per_trial": _steady(done),
            "ray_init_s": None,
            "states": counts, "reports_recorded": sum(len(t.intermediate_values) for t in trials)}


def _scenario_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from runner.ray_init import advertise_loopback

    advertise_loopback()  # before anything imports ray
    spec = json.loads(args.scenario)
    work = tempfile.mkdtemp(prefix=f"bench-runner-{spec['kind']}-")
    try:
        result = {"runner": run_runner, "tune": run_tune, "optuna": run_optuna}[spec["kind"]](
            spec, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(dict(spec, **result)))


# --- the benchmark ------------------------------------------------------------------------------

def _run_scenario(name: str, spec: dict) -> dict:
    LOGS.mkdir(parents=True, exist_ok=True)
    result_path = LOGS / f"{name}.json"
    result_path.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    print(f"[bench runner] {name}: {spec}", flush=True)
    load_before = os.getloadavg()[0]
    with open(LOGS / f"{name}.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, __file__, "--scenario", json.dumps(spec), "--out", str(result_path)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=SCENARIO_TIMEOUT_S)
    if proc.returncode != 0 or not result_path.exists():
        tail = (LOGS / f"{name}.log").read_text()[-4000:]
        raise RuntimeError(f"scenario {name} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(result_path.read_text())
    result["load_1min_before"], result["load_1min_after"] = load_before, os.getloadavg()[0]
    result["per_trial_ms"] = 1000 * result["total_s"] / result["trials"]
    if result["steady_s_per_trial"] is not None:
        result["steady_per_trial_ms"] = 1000 * result["steady_s_per_trial"]
    print(f"[bench runner] {name}: {result['total_s']:.2f} s, {result['per_trial_ms']:.1f} ms/trial, "
          f"states {result['states']}, load {load_before:.1f} -> {result['load_1min_after']:.1f}",
          flush=True)
    return result


def _invalid(name: str, r: dict) -> str | None:
    """Why a scenario's figures cannot be used (trials that failed time nothing useful)."""
    finished = r["states"].get("COMPLETE", 0) + r["states"].get("PRUNED", 0)
    if r["states"].get("FAIL") or finished != r["trials"]:
        return f"{name}: {r['states']} (first error: {r.get('first_error')})"
    return None


def _source() -> dict:
    """Which runner code was measured: others edit it while benchmarks run."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"),
            "modified_runner_files": git("status", "--porcelain", "--", "runner").splitlines()}


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
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "ray": ray.__version__,
            "optuna": optuna.__version__}


def _per_report(results: dict, few: str, many: str, key: str) -> dict | None:
    """Extra time per extra report, from total wall times or from steady-state trial intervals.

    Both are amortised over the whole run (two trials report at once); a trial itself is slowed
    by about ``CONCURRENT`` times that, which is the second figure.
    """
    if few not in results or many not in results:
        return None
    a, b = results[few], results[many]
    if a.get(key) is None or b.get(key) is None:
        return None
    per_trial = b[key] / b["trials"] - a[key] / a["trials"] if key == "total_s" else b[key] - a[key]
    amortized = per_trial / (b["reports"] - a["reports"])
    return {"us_per_report": 1e6 * amortized,
            "us_per_report_seen_by_a_trial": 1e6 * amortized * CONCURRENT}


def test_bench_runner():
    only = {s for s in os.environ.get("SWEEP_BENCH_ONLY", "").split(",") if s}
    chosen = {n: s for n, s in SCENARIOS.items() if not only or n in only}
    source = _source()
    results = {name: _run_scenario(name, spec) for name, spec in chosen.items()}
    invalid = [why for name, r in results.items() if (why := _invalid(name, r))]

    tune_ms = results["tune"]["per_trial_ms"] if "tune" in results else None
    for r in results.values():
        r["speedup_vs_tune"] = tune_ms / r["per_trial_ms"] if tune_ms else None

    reports = {}
    for label, few, many in (("pruner none", "reports_few", "reports_many"),
                             ("median pruner (waits for decisions)", "reports_few_median",
                              "reports_many_median")):
        by_wall = _per_report(results, few, many, "total_s")
        if by_wall is not None:
            reports[label] = {"wall": by_wall,
                              "steady": _per_report(results, few, many, "steady_s_per_trial")}

    print()
    print(f"runner benchmark: {TRIALS} trials x {FEW} reports, {CONCURRENT} concurrent, "
          f"local Ray, TPE seed {SEED}")
    print(f"{'scenario':34} {'total s':>8} {'ms/trial':>9} {'steady ms':>10} {'vs Tune':>8} "
          f"{'states':>24}")
    for name, label in LABELS.items():
        if name not in results:
            continue
        r = results[name]
        speed = f"{r['speedup_vs_tune']:.1f}x" if r["speedup_vs_tune"] else "-"
        steady = f"{r.get('steady_per_trial_ms', float('nan')):.1f}"
        states = ",".join(f"{k}={v}" for k, v in sorted(r["states"].items()))
        print(f"{label:34} {r['total_s']:8.2f} {r['per_trial_ms']:9.1f} {steady:>10} {speed:>8} "
              f"{states:>24}")
    for label, figures in reports.items():
        wall, steady = figures["wall"], figures["steady"]
        print(f"per report, {label}: {wall['us_per_report']:.1f} us (wall difference / "
              f"{REPORT_TRIALS * (MANY - FEW)} extra reports; "
              f"{wall['us_per_report_seen_by_a_trial']:.1f} us as one trial sees it)"
              + (f"; from steady-state intervals: {steady['us_per_report']:.1f} us" if steady else ""))

    targets = {}
    if "runner" in results:
        ms = results["runner"]["per_trial_ms"]
        targets["per_trial_ms"] = {"value": ms, "target": TARGET_TRIAL_MS,
                                   "met": ms <= TARGET_TRIAL_MS}
        if tune_ms:
            x = results["runner"]["speedup_vs_tune"]
            targets["speedup_vs_tune"] = {"value": x, "target": TARGET_SPEEDUP,
                                          "met": x >= TARGET_SPEEDUP}
    for base, logged in (("runner", "runner_tensorboard"), ("runner", "runner_loggers"),
                         ("runner_waiting", "runner_waiting_loggers")):
        if base in results and logged in results:
            extra = results[logged]["per_trial_ms"] / results[base]["per_trial_ms"] - 1
            targets[f"overhead_{logged}"] = {"value": extra, "target": TARGET_LOGGING_OVERHEAD,
                                             "met": extra <= TARGET_LOGGING_OVERHEAD}
    if "pruner none" in reports:
        # judged on the steady-state figure: a 20-trial run's wall time is dominated by the
        # workers' start-up, which varies by seconds between identical runs on a busy machine
        basis = reports["pruner none"]["steady"] or reports["pruner none"]["wall"]
        us = basis["us_per_report"]
        targets["per_report_us"] = {"value": us, "target": TARGET_REPORT_US,
                                    "met": us <= TARGET_REPORT_US}
    for name, t in targets.items():
        print(f"target {name}: {t['value']:.3g} (target {'<=' if name != 'speedup_vs_tune' else '>='}"
              f" {t['target']:g}): {'met' if t['met'] else 'NOT met'}")

    for why in invalid:
        print(f"INVALID scenario (trials failed, its figures mean nothing): {why}")

    OUT.mkdir(exist_ok=True)
    (OUT / "runner.json").write_text(json.dumps({
        "machine": _machine(), "source": source, "invalid": invalid,
        "trials": TRIALS, "reports_per_trial": FEW,
        "concurrent": CONCURRENT, "sampler": f"TPE seed={SEED} multivariate group constant_liar",
        "scenarios": results, "per_report": reports, "targets": targets}, indent=2))
    assert results, "no scenario ran"
    assert not invalid, "benchmark scenarios with failed trials: " + "; ".join(invalid)


if __name__ == "__main__":
    _scenario_main(sys.argv[1:])
