"""PBT on the character-level LM: this runner's ``strategy: pbt`` against Ray Tune's
PopulationBasedTraining and against TPE + ASHA with the same compute.

Run by `make bench`. The task is ``examples.charlm_torch:train`` (2 layers, d_model 32, context
32, batch 16: ~33K parameters, AdamW) with a WSD learning rate (warmup 5%, stable, 1-sqrt
cooldown over the last 20%; ``pbt_trainables.wsd_spec``) whose ``peak_value`` is loguniform
[3e-4, 3e-2], ``b2`` uniform [0.9, 0.999] and ``weight_decay`` loguniform [1e-3, 0.3] (the WSD
branch of sweeps/charlm.yaml); warmup and stable lengths are fixed, so the three methods search
the same three numbers. Every method: local Ray on this machine's CPUs (a fresh one per scenario,
in its own process), 1 CPU per trial, 2 trials at a time.

- ``ours``: ``search: {strategy: pbt, population: P, interval_steps: I, quantile: 0.25,
  resample_probability: 0.25, perturb_factors: [0.8, 1.2], seed}``, budget T steps, a report
  every R steps. Synchronous generations.
- ``tune``: ``Tuner`` + ``PopulationBasedTraining(time_attr="training_iteration",
  perturbation_interval=I/R)`` (one Tune iteration = R steps of the same model, data and
  optimizer: ``pbt_trainables.tune_train``, a function trainable checkpointing model + optimizer
  + step every I steps), ``num_samples=P``, the same quantile_fraction, resample_probability,
  perturbation_factors, ``hyperparam_mutations`` over peak lr / b2 / weight decay, Tune's
  default asynchronous PBT; ``custom_explore_fn`` clips a perturbed value into its range (ours
  clips too; without it b2 * 1.2 > 1). Initial configs from ``BasicVariantGenerator(
  random_state=seed)``, Tune PBT's draws from Python's ``random``, seeded before ``fit``.
  The learning rate is the same WSD shape with the mutated peak, at the absolute step (what our
  PBT's absolute join does), not Tune's usual constant lr. ``reuse_actors=True``, as Tune's PBT
  asks for (it warns without it): with P trials on 2 CPUs Tune time-multiplexes the population,
  pausing and restarting trials at every perturbation interval. Optional methods (in
  ``BENCH_PBT_ONLY``): ``tune_synch``, the same with ``synch=True``; ``tune_fresh_actors``, the
  same with Tune's default ``reuse_actors=False`` (a new actor, importing torch, per restart).
- ``tpe_asha``: the runner's default strategy, ``search: {sampler: tpe, n_trials: N}``,
  ``pruner: {kind: asha, min_resource: R0, reduction_factor: 3}``; N is chosen so that the steps
  trained (the last step of each trial in the history table, summed) come close to P*T: from the
  rung arithmetic (``_tpe_trials``), or ``BENCH_PBT_TPE_TRIALS``. The steps really trained are
  reported, with their ratio to P*T.

Metrics: the final best val_loss (the best member / trial that reached the full budget T, per
seed, and the median over seeds); run-to-run spread with a fixed seed (ours and Tune run the
first seed a second time: max abs difference of every member's final val_loss, and of the best;
0 means bit-identical); wall time (from building the sweep / Tuner to the end of the run, Ray's
start reported apart); steps trained. Nothing about speed or quality is asserted; a scenario
whose trials failed fails the test after the JSON is written. Prints a table and writes
``bench-out/pbt.json``; logs of each scenario in ``bench-out/pbt-logs/``.

Scaling: ``BENCH_PBT_SEEDS`` (2), ``BENCH_PBT_STEPS`` (T=300), ``BENCH_PBT_POPULATION`` (P=4),
``BENCH_PBT_INTERVAL`` (I=50), ``BENCH_PBT_REPORT_EVERY`` (R=25), ``BENCH_PBT_TPE_TRIALS``,
``BENCH_PBT_ONLY`` (comma-separated methods: ours, tune, tune_synch, tune_fresh_actors, tpe_asha;
default ours, tune, tpe_asha).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench-out"
LOGS = OUT / "pbt-logs"
TRAINABLE = "examples.charlm_torch:train"
PARAMS = {"n_layer": 2, "d_model": 32, "n_head": 4, "context": 32, "batch_size": 16}
SEEDS = list(range(int(os.environ.get("BENCH_PBT_SEEDS", "2"))))
STEPS = int(os.environ.get("BENCH_PBT_STEPS", "300"))
POPULATION = int(os.environ.get("BENCH_PBT_POPULATION", "4"))
INTERVAL = int(os.environ.get("BENCH_PBT_INTERVAL", "50"))
REPORT_EVERY = int(os.environ.get("BENCH_PBT_REPORT_EVERY", "25"))
QUANTILE = 0.25
RESAMPLE = 0.25
FACTORS = (0.8, 1.2)
CONCURRENT = 2
REDUCTION = 3
MIN_RESOURCE = REPORT_EVERY  # the first ASHA rung: the first report
METHODS = ("ours", "tune", "tune_synch", "tune_fresh_actors", "tpe_asha")
DEFAULT_METHODS = ("ours", "tune", "tpe_asha")
LABELS = {"ours": "sweep strategy: pbt", "tune": "Ray Tune PBT (async, reuse)",
          "tune_synch": "Ray Tune PBT (synch, reuse)",
          "tune_fresh_actors": "Ray Tune PBT (async, fresh)", "tpe_asha": "sweep TPE + ASHA"}
TUNE_VARIANTS = {"tune": {"synch": False, "reuse_actors": True},
                 "tune_synch": {"synch": True, "reuse_actors": True},
                 "tune_fresh_actors": {"synch": False, "reuse_actors": False}}
SCENARIO_TIMEOUT_S = 1800


def _tpe_trials() -> int:
    """N such that N trials under ASHA train about P*T steps in all, if each rung keeps 1/eta."""
    rungs = []
    rung = MIN_RESOURCE
    while rung < STEPS:
        rungs.append(rung)
        rung *= REDUCTION
    expected, reached, survivors = 0.0, 0, 1.0
    for rung in rungs + [STEPS]:
        expected += survivors * (rung - reached)
        reached, survivors = rung, survivors / REDUCTION
    return max(1, round(POPULATION * STEPS / expected))


TPE_TRIALS = int(os.environ.get("BENCH_PBT_TPE_TRIALS", "0")) or _tpe_trials()


# --- the scenarios (each in its own process, with its own Ray) ---------------------------------

def _hyperparams() -> dict:
    from tests.bench.pbt_trainables import B2, PEAK, WEIGHT_DECAY, wsd_spec

    lr = wsd_spec(0.0, STEPS)
    lr["peak_value"] = {"loguniform": list(PEAK)}
    return {"learning_rate": lr,
            "b2": {"kind": "constant", "value": {"uniform": list(B2)}},
            "weight_decay": {"kind": "constant", "value": {"loguniform": list(WEIGHT_DECAY)}}}


def _config(spec: dict, storage: str):
    from runner.config import parse_config

    seed = spec["seed"]
    data = {
        "name": f"bench-pbt-{spec['method']}",
        "trainable": TRAINABLE,
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "hyperparams": _hyperparams(),
        "params": PARAMS,
        "resources": {"cpu": 1},
        "max_concurrent": CONCURRENT,
        "storage": storage,
        "seed": seed,
    }
    if spec["method"] == "ours":
        data["budget"] = {"steps": STEPS, "report_every": REPORT_EVERY,
                          "checkpoint_every": INTERVAL}
        data["search"] = {"strategy": "pbt", "population": POPULATION,
                          "interval_steps": INTERVAL, "quantile": QUANTILE,
                          "resample_probability": RESAMPLE, "perturb_factors": list(FACTORS),
                          "seed": seed}
    else:
        data["budget"] = {"steps": STEPS, "report_every": REPORT_EVERY, "checkpoint_every": STEPS}
        data["search"] = {"sampler": "tpe", "seed": seed, "n_trials": spec["trials"]}
        data["pruner"] = {"kind": "asha", "min_resource": MIN_RESOURCE,
                          "reduction_factor": REDUCTION}
    return parse_config(data, f"bench-pbt-{spec['method']}.yaml")


def run_runner(spec: dict, work: str) -> dict:
    from runner.ray_init import ray_session

    started = time.perf_counter()
    with ray_session():
        init_s = time.perf_counter() - started
        from runner.driver import Sweep
        from runner.records import RunRecords

        t0 = time.perf_counter()
        config = _config(spec, os.path.join(work, "run"))
        summary = Sweep(config).run()
        wall = time.perf_counter() - t0
    records = RunRecords(config.run_dir())
    trials = records.read("trials").to_pylist()
    history = records.read("history").to_pylist()
    last_step: dict[int, int] = {}
    for row in history:
        if row["metric"] == "val_loss":
            last_step[row["trial"]] = max(last_step.get(row["trial"], 0), row["step"])
    final = {str(t["number"]): t["value"] for t in trials
             if t["state"] == "COMPLETE" and last_step.get(t["number"]) == STEPS}
    lineage = records.read("lineage").to_pylist() if spec["method"] == "ours" else []
    exploits = len(lineage) if spec["method"] == "ours" else None
    # [member, donor, step, the explored point's sampled values]
    exploit_log = [[r["member"], r["donor"], r["step"], json.loads(r["new"])] for r in lineage]
    errors = [t["error"] for t in trials if t["error"]]
    return {"wall_s": wall, "ray_init_s": init_s, "states": summary.counts,
            "final": final, "steps_trained": sum(last_step.values()),
            "trials_run": len(trials), "exploits": exploits, "exploit_log": exploit_log,
            "pruned_at": sorted(last_step[t["number"]] for t in trials
                                if t["state"] == "PRUNED" and t["number"] in last_step),
            "first_error": errors[0] if errors else None}


def run_tune(spec: dict, work: str) -> dict:
    import random

    import numpy as np

    from runner.ray_init import ray_session

    started = time.perf_counter()
    with ray_session():
        init_s = time.perf_counter() - started
        from ray import tune
        from ray.tune.schedulers import PopulationBasedTraining
        from ray.tune.search.basic_variant import BasicVariantGenerator

        from tests.bench import pbt_trainables as pt

        seed = spec["seed"]
        reports = {"count": 0}

        class Count(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                reports["count"] += 1  # each result is REPORT_EVERY steps trained

        t0 = time.perf_counter()
        space = {"peak_value": tune.loguniform(*pt.PEAK), "b2": tune.uniform(*pt.B2),
                 "weight_decay": tune.loguniform(*pt.WEIGHT_DECAY)}
        pbt = PopulationBasedTraining(
            time_attr="training_iteration", metric="val_loss", mode="min",
            perturbation_interval=INTERVAL // REPORT_EVERY, hyperparam_mutations=space,
            quantile_fraction=QUANTILE, resample_probability=RESAMPLE,
            perturbation_factors=FACTORS, custom_explore_fn=pt.clip_to_space,
            synch=TUNE_VARIANTS[spec["method"]]["synch"])
        random.seed(seed)  # Tune's PBT draws from Python's global random in this process
        np.random.seed(seed)
        tuner = tune.Tuner(
            tune.with_resources(pt.tune_train, {"cpu": 1}),
            param_space={**space, "seed": seed, "steps": STEPS, "report_every": REPORT_EVERY,
                         "interval_steps": INTERVAL, "params": PARAMS},
            tune_config=tune.TuneConfig(
                scheduler=pbt, num_samples=POPULATION,
                search_alg=BasicVariantGenerator(random_state=seed),
                reuse_actors=TUNE_VARIANTS[spec["method"]]["reuse_actors"]),
            run_config=tune.RunConfig(name="bench-pbt", storage_path=os.path.join(work, "tune"),
                                      stop={"training_iteration": STEPS // REPORT_EVERY},
                                      verbose=0, callbacks=[Count()]))
        results = tuner.fit()
        wall = time.perf_counter() - t0
        final, wrong_member = {}, []
        for r in results:
            if r.error is None and r.metrics.get("step") == STEPS:
                index = pt._index(r.metrics["trial_id"])
                final[str(index)] = r.metrics["val_loss"]
                if r.metrics.get("member") != index:  # the seed came from another trial's id
                    wrong_member.append((index, r.metrics.get("member")))
        errors = [str(r.error) for r in results if r.error]
        perturbations = pbt._num_perturbations
        policy = Path(work, "tune", "bench-pbt", "pbt_global.txt")
        # [member tag, donor tag, member iteration, donor iteration, donor config, new config]
        exploit_log = [json.loads(line)[:4] + [{k: json.loads(line)[5][k] for k in pt.BOUNDS}]
                       for line in policy.read_text().splitlines()] if policy.exists() else []
    return {"wall_s": wall, "ray_init_s": init_s,
            "states": {"COMPLETE": len(results) - results.num_errors, "FAIL": results.num_errors},
            "final": final, "steps_trained": reports["count"] * REPORT_EVERY,
            "trials_run": len(results), "exploits": perturbations, "pruned_at": [],
            "wrong_member": wrong_member, "exploit_log": exploit_log,
            "first_error": errors[0][-2000:] if errors else None}


def _scenario_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from runner.ray_init import advertise_loopback

    advertise_loopback()  # before anything imports ray
    spec = json.loads(args.scenario)
    work = tempfile.mkdtemp(prefix=f"bench-pbt-{spec['method']}-")
    try:
        run = run_tune if spec["method"].startswith("tune") else run_runner
        result = run(spec, work)
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
    print(f"[bench pbt] {name}: {spec}", flush=True)
    load_before = os.getloadavg()[0]
    with open(LOGS / f"{name}.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, __file__, "--scenario", json.dumps(spec), "--out", str(result_path)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=SCENARIO_TIMEOUT_S)
    if proc.returncode != 0 or not result_path.exists():
        tail = (LOGS / f"{name}.log").read_text()[-4000:]
        return dict(spec, failed=f"exit {proc.returncode}:\n{tail}", final={},
                    load_1min_before=load_before, load_1min_after=os.getloadavg()[0])
    result = json.loads(result_path.read_text())
    result["load_1min_before"], result["load_1min_after"] = load_before, os.getloadavg()[0]
    finals = result["final"].values()
    result["best"] = min(finals) if finals else None
    print(f"[bench pbt] {name}: best val_loss {result['best']}, {result['wall_s']:.1f} s, "
          f"{result['steps_trained']} steps, states {result['states']}, "
          f"load {load_before:.1f} -> {result['load_1min_after']:.1f}", flush=True)
    return result


def _invalid(name: str, r: dict) -> str | None:
    """Why a scenario's figures cannot be used."""
    if r.get("failed"):
        return f"{name}: {r['failed'][-1500:]}"
    if r.get("wrong_member"):
        return f"{name}: a Tune trial seeded from another trial's id: {r['wrong_member']}"
    if r["states"].get("FAIL") or not r["final"]:
        return f"{name}: {r['states']}, {len(r['final'])} at the full budget " \
               f"(first error: {r.get('first_error')})"
    return None


def _spread(a: dict, b: dict) -> dict | None:
    """Max abs difference between two runs with the same seed: of every member's final value
    (members by number), and of the best."""
    if not a.get("final") or not b.get("final"):
        return None
    members = sorted(set(a["final"]) | set(b["final"]), key=int)
    missing = [m for m in members if m not in a["final"] or m not in b["final"]]
    diffs = [abs(a["final"][m] - b["final"][m]) for m in members if m not in missing]
    return {"members_max_abs_diff": max(diffs) if diffs else None,
            "best_abs_diff": abs(a["best"] - b["best"]),
            "members_missing_in_one_run": missing}


def _source() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"),
            "modified_files": git("status", "--porcelain", "--", "runner", "examples",
                                  "schedules").splitlines()}


def _machine() -> dict:
    import optuna
    import ray
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "ray": ray.__version__,
            "optuna": optuna.__version__, "torch": torch.__version__}


def _fmt(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def test_bench_pbt():
    only = [m for m in os.environ.get("BENCH_PBT_ONLY", "").split(",") if m]
    unknown = [m for m in only if m not in METHODS]
    assert not unknown, f"BENCH_PBT_ONLY: unknown methods {unknown}; expected some of {METHODS}"
    methods = [m for m in METHODS if m in (only or DEFAULT_METHODS)]
    source = _source()
    load_start = os.getloadavg()
    scenarios: dict[str, dict] = {}
    for method in methods:
        for seed in SEEDS:
            spec = {"method": method, "seed": seed}
            if method == "tpe_asha":
                spec["trials"] = TPE_TRIALS
            scenarios[f"{method}_seed{seed}"] = _run_scenario(f"{method}_seed{seed}", spec)
        if method != "tpe_asha" and SEEDS:  # the first seed again: run-to-run spread
            spec = {"method": method, "seed": SEEDS[0], "repeat": True}
            scenarios[f"{method}_seed{SEEDS[0]}_again"] = _run_scenario(
                f"{method}_seed{SEEDS[0]}_again", spec)
    load_end = os.getloadavg()
    invalid = [why for name, r in scenarios.items() if (why := _invalid(name, r))]

    summary = {}
    for method in methods:
        runs = [scenarios[f"{method}_seed{s}"] for s in SEEDS]
        bests = [r.get("best") for r in runs]
        walls = [r["wall_s"] for r in runs if "wall_s" in r]
        steps = [r["steps_trained"] for r in runs if "steps_trained" in r]
        again = scenarios.get(f"{method}_seed{SEEDS[0]}_again")
        summary[method] = {
            "best_per_seed": dict(zip(map(str, SEEDS), bests)),
            "best_median": statistics.median(b for b in bests if b is not None)
            if any(b is not None for b in bests) else None,
            "spread_fixed_seed": _spread(runs[0], again) if again else None,
            "wall_s_per_seed": walls + ([again["wall_s"]] if again and "wall_s" in again else []),
            "wall_s_median": statistics.median(walls) if walls else None,
            "steps_trained_per_seed": steps,
            "steps_ratio_to_budget": [s / (POPULATION * STEPS) for s in steps],
            "exploits_per_seed": [r.get("exploits") for r in runs],
        }

    print()
    print(f"PBT benchmark: char LM {PARAMS}, population {POPULATION}, {STEPS} steps, interval "
          f"{INTERVAL} steps, report every {REPORT_EVERY}; TPE+ASHA {TPE_TRIALS} trials "
          f"(min_resource {MIN_RESOURCE}, eta {REDUCTION}); seeds {SEEDS}; load "
          f"{load_start[0]:.2f} -> {load_end[0]:.2f}")
    seed_cols = " ".join(f"{'seed ' + str(s):>8}" for s in SEEDS)
    print(f"{'method':28} {seed_cols} {'median':>8} {'spread':>9} {'wall s':>14} "
          f"{'steps/(P*T)':>12} {'exploits':>9}")
    for method in methods:
        s = summary[method]
        bests = " ".join(f"{_fmt(b):>8}" for b in s["best_per_seed"].values())
        spread = s["spread_fixed_seed"]
        spread_txt = "-" if not spread or spread["members_max_abs_diff"] is None else \
            f"{spread['members_max_abs_diff']:.2g}"
        walls = "/".join(f"{w:.0f}" for w in s["wall_s_per_seed"])
        ratio = "/".join(f"{x:.2f}" for x in s["steps_ratio_to_budget"])
        exploits = "/".join(str(e) for e in s["exploits_per_seed"] if e is not None) or "-"
        print(f"{LABELS[method]:28} {bests} {_fmt(s['best_median']):>8} {spread_txt:>9} "
              f"{walls:>14} {ratio:>12} {exploits:>9}")
    print("spread: max abs difference of every member's final val_loss between two runs with "
          "the first seed (0 = bit-identical); wall: per seed, then the repeat")
    for why in invalid:
        print(f"INVALID scenario: {why}")

    OUT.mkdir(exist_ok=True)
    (OUT / "pbt.json").write_text(json.dumps({
        "machine": _machine(), "source": source, "invalid": invalid,
        "load_1min_5min_15min": {"start": load_start, "end": load_end},
        "settings": {"params": PARAMS, "population": POPULATION, "steps": STEPS,
                     "interval_steps": INTERVAL, "report_every": REPORT_EVERY,
                     "quantile": QUANTILE, "resample_probability": RESAMPLE,
                     "perturb_factors": FACTORS, "concurrent": CONCURRENT, "seeds": SEEDS,
                     "tpe_trials": TPE_TRIALS, "asha_min_resource": MIN_RESOURCE,
                     "asha_reduction_factor": REDUCTION, "hyperparams": _hyperparams()},
        "summary": summary, "scenarios": scenarios}, indent=2, default=str))
    assert scenarios, "no scenario ran"
    assert not invalid, "benchmark scenarios that failed: " + "; ".join(invalid)


if __name__ == "__main__":
    _scenario_main(sys.argv[1:])
