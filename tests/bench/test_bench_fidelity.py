"""Fidelity at successive-halving rungs on the character LM: how well a rung score ranks trials.

Run by `make bench`. For N random configs per seed (``search.sampler: random``), two budgets
(T and 4T) and two search spaces, three rung scores at r = T/9 and T/3 (rounded to a report):

- ``truncated cosine``: a warmup-cosine trial's val_loss at r (what every HPO system scores);
  its final is the cosine's val_loss at T;
- ``wsd stable``: a WSD trial's val_loss at r, in its stable phase, never cooled down;
- ``cooldown``: the val_loss of the cooldown branch to r (``fidelity: {kind: cooldown}``, the
  WSD's own cooldown share and shape, scaled to r).

Both WSD scores come from one sweep (``fidelity.rungs`` without a pruner: every trunk runs to T,
a branch at each rung); the final of a WSD trial is its trunk's val_loss at T. Space 1: peak lr
loguniform [3e-4, 3e-2], weight decay loguniform [1e-3, 0.3] (WSD: warmup 5%, 1-sqrt cooldown
over the last 20%). Space 2 adds b2 uniform [0.9, 0.999] and, for the WSD, the cooldown's share
(10, 20 or 40% of T) and type (linear, cosine, 1-sqrt) as a choice of wsd specs.

Per score: Spearman's rank correlation with the final results (of the same schedule family) and
how many of the true top 5 are among the top third by the score (what reduction factor 3 would
promote), each with a 95% bootstrap interval (configs resampled with replacement, all seeds
pooled), and the paired difference of rho, cooldown minus WSD stable, on the same resamples;
branch steps as a share of the trunks' steps. Nothing is asserted. Prints a table and
writes ``bench-out/fidelity.json``.

Scaling: ``BENCH_FID_CONFIGS`` (N=12), ``BENCH_FID_SEEDS`` (2), ``BENCH_FID_STEPS`` (T=300),
``BENCH_FID_BOOT`` (1000 resamples).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench-out"
CONFIGS = int(os.environ.get("BENCH_FID_CONFIGS", "12"))
SEEDS = list(range(int(os.environ.get("BENCH_FID_SEEDS", "2"))))
STEPS = int(os.environ.get("BENCH_FID_STEPS", "300"))
BOOT = int(os.environ.get("BENCH_FID_BOOT", "1000"))
PARAMS = {"n_layer": 2, "d_model": 32, "n_head": 4, "context": 32, "batch_size": 16}
PEAK, WEIGHT_DECAY, B2 = [3e-4, 3e-2], [1e-3, 0.3], [0.9, 0.999]
SCORES = ("truncated cosine", "wsd stable", "cooldown")
TOP, PROMOTED = 5, 1 / 3


def _wsd(steps: int, decay: float, decay_type) -> dict:
    warmup, cooldown = round(0.05 * steps), round(decay * steps)
    return {"kind": "wsd", "peak_value": {"loguniform": PEAK}, "warmup_steps": warmup,
            "stable_steps": steps - warmup - cooldown, "decay_steps": cooldown,
            "decay_type": decay_type, "end_value": 1e-5}


def _hyperparams(family: str, space: int, steps: int) -> dict:
    if family == "cosine":
        lr = {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": {"loguniform": PEAK},
              "warmup_steps": round(0.05 * steps), "decay_steps": steps, "end_value": 1e-5}
    elif space == 1:
        lr = _wsd(steps, 0.2, "1-sqrt")
    else:
        types = {"choice": ["linear", "cosine", "1-sqrt"]}
        lr = {"choice": [_wsd(steps, share, types) for share in (0.1, 0.2, 0.4)]}
    out = {"learning_rate": lr,
           "weight_decay": {"kind": "constant", "value": {"loguniform": WEIGHT_DECAY}}}
    if space == 2:
        out["b2"] = {"kind": "constant", "value": {"uniform": B2}}
    return out


def _rungs(steps: int, every: int) -> list[int]:
    return [max(every, round(steps / k / every) * every) for k in (9, 3)]


def _sweep(family: str, space: int, steps: int, seed: int, work: str) -> dict:
    """One sweep: per trial its final value, its own val_loss at each rung, and (WSD) its
    branches' values; the steps trained by trunks and by branches."""
    from runner.config import parse_config
    from runner.driver import Sweep
    from runner.records import RunRecords

    every = steps // 30
    rungs = _rungs(steps, every)
    data = {"name": f"fid-{family}-{space}-{steps}-{seed}",
            "trainable": "examples.charlm_torch:train", "objective": {"metric": "val_loss"},
            "budget": {"steps": steps, "report_every": every, "checkpoint_every": steps},
            "search": {"sampler": "random", "seed": seed, "n_trials": CONFIGS},
            "hyperparams": _hyperparams(family, space, steps), "params": PARAMS,
            "resources": {"cpu": 1}, "max_concurrent": 2, "seed": seed,
            "storage": os.path.join(work, f"{family}-{space}-{steps}-{seed}")}
    if family == "wsd":
        data["fidelity"] = {"kind": "cooldown", "rungs": rungs}
    config = parse_config(data, "fidelity.yaml")
    started = time.perf_counter()
    Sweep(config).run()
    wall = time.perf_counter() - started
    records = RunRecords(config.run_dir())
    trials = [t for t in records.read("trials").to_pylist() if t["rung"] is None]
    at = {(h["trial"], h["step"]): h["value"] for h in records.read("history").to_pylist()
          if h["metric"] == "val_loss"}
    branches = records.read("branches").to_pylist()
    branch = {(b["trial"], b["rung"]): b["value"] for b in branches}
    rows = [{"final": t["value"], "own": [at[(t["number"], r)] for r in rungs],
             "branch": [branch.get((t["number"], r)) for r in rungs]}
            for t in sorted(trials, key=lambda t: t["number"]) if t["state"] == "COMPLETE"]
    branch_steps = sum(b["to_step"] - b["from_step"] for b in branches)
    return {"rows": rows, "rungs": rungs, "wall_s": wall, "failed": len(trials) - len(rows),
            "branch_share": branch_steps / (steps * max(1, len(trials)))}


def _spearman(score: np.ndarray, final: np.ndarray) -> float:
    rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731  (ties: none in float losses)
    return float(np.corrcoef(rank(score), rank(final))[0, 1])


def _top_found(score: np.ndarray, final: np.ndarray) -> float:
    """How many of the true top 5 (by final) are among the top third by the score."""
    promoted = set(np.argsort(score)[:max(1, round(PROMOTED * len(score)))])
    return float(len(promoted & set(np.argsort(final)[:TOP])))


def _with_interval(stat, score: np.ndarray, final: np.ndarray, rng) -> dict:
    draws = [stat(score[i], final[i]) for i in
             (rng.integers(0, len(score), len(score)) for _ in range(BOOT))]
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {"value": stat(score, final), "low": float(low), "high": float(high)}


def _paired_difference(branch: np.ndarray, stable: np.ndarray, final: np.ndarray, rng) -> dict:
    """rho(branch) - rho(stable) on the same resampled configs: both scores come from the same
    trunks, so the difference is judged paired (tighter than two separate intervals)."""
    def difference(i):
        return _spearman(branch[i], final[i]) - _spearman(stable[i], final[i])

    draws = [difference(rng.integers(0, len(final), len(final))) for _ in range(BOOT)]
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {"value": difference(np.arange(len(final))), "low": float(low), "high": float(high)}


def _fidelity(cosine: list[dict], wsd: list[dict], rung: int, rng) -> dict:
    series = {"truncated cosine": ([r["own"][rung] for r in cosine], [r["final"] for r in cosine]),
              "wsd stable": ([r["own"][rung] for r in wsd], [r["final"] for r in wsd]),
              "cooldown": ([r["branch"][rung] for r in wsd], [r["final"] for r in wsd])}
    out = {}
    for name, (score, final) in series.items():
        score, final = np.asarray(score, float), np.asarray(final, float)
        out[name] = {"spearman": _with_interval(_spearman, score, final, rng),
                     "top5_promoted": _with_interval(_top_found, score, final, rng)}
    out["cooldown - wsd stable"] = _paired_difference(
        *(np.asarray(series[name][0], float) for name in ("cooldown", "wsd stable")),
        np.asarray(series["cooldown"][1], float), rng)
    return out


def test_fidelity_of_rung_scores():
    from runner.ray_init import ray_session

    rng = np.random.default_rng(0)
    results, sweeps = [], {}
    with tempfile.TemporaryDirectory() as work, ray_session():
        for steps in (STEPS, 4 * STEPS):
            for space in (1, 2):
                runs = {family: [_sweep(family, space, steps, seed, work) for seed in SEEDS]
                        for family in ("cosine", "wsd")}
                pooled = {f: [row for run in r for row in run["rows"]] for f, r in runs.items()}
                rungs = runs["wsd"][0]["rungs"]
                sweeps[f"T={steps} space {space}"] = {
                    f: {"wall_s": sum(r["wall_s"] for r in rs), "failed": sum(r["failed"]
                                                                             for r in rs)}
                    for f, rs in runs.items()}
                for index, rung in enumerate(rungs):
                    results.append({"steps": steps, "space": space, "rung": rung,
                                    "configs": len(pooled["wsd"]),
                                    "branch_share": runs["wsd"][0]["branch_share"],
                                    "scores": _fidelity(pooled["cosine"], pooled["wsd"], index,
                                                        rng), "rows": pooled})
    OUT.mkdir(exist_ok=True)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
              "configs_per_seed": CONFIGS, "seeds": SEEDS, "bootstrap": BOOT,
              "results": results, "sweeps": sweeps}
    (OUT / "fidelity.json").write_text(json.dumps(report, indent=1))
    print(f"\nfidelity of rung scores, {CONFIGS} configs x {len(SEEDS)} seeds "
          f"(95% bootstrap intervals)")
    print(f"{'budget':>7} {'space':>5} {'rung':>5}  " +
          "  ".join(f"{name:>26}" for name in SCORES))
    for row in results:
        cells = [f"rho {s['spearman']['value']:.2f} [{s['spearman']['low']:.2f},"
                 f"{s['spearman']['high']:.2f}] top5 {s['top5_promoted']['value']:.0f}"
                 for s in (row["scores"][name] for name in SCORES)]
        paired = row["scores"]["cooldown - wsd stable"]
        print(f"{row['steps']:>7} {row['space']:>5} {row['rung']:>5}  " +
              "  ".join(f"{c:>26}" for c in cells) +
              f"  paired {paired['value']:+.2f} [{paired['low']:+.2f},{paired['high']:+.2f}]")
    print(f"branches: {100 * results[0]['branch_share']:.1f}% of the trunks' steps; "
          f"sweeps: {json.dumps(sweeps)}")
