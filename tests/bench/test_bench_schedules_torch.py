"""Per-step overhead of ``schedules.torch`` driving four AdamW hyperparameters (target: <= 2%).

Two identical MLP training loops, one with constant hyperparameters and one whose learning rate,
b1, b2 and weight decay follow schedules, run in interleaved blocks (A/A'/B, then B/A'/A) so drift
in the machine's speed hits both alike; medians are reported. A' is a second constant loop: how
far it lands from A is the noise floor of the comparison. The adapter's own work per update is also
timed in isolation, a low-noise figure next to the loop-level one. Figures go to
``bench-out/schedules_torch.json``; the target is reported, not asserted.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import timeit
from pathlib import Path

import torch

import schedules.torch as sched_torch

TARGET_PCT = 2.0
STEPS_PER_BLOCK = 250
REPS = 20
OUT = Path(__file__).resolve().parents[2] / "bench-out" / "schedules_torch.json"

SCHEDULES = {
    "learning_rate": {"kind": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 3e-3,
                      "warmup_steps": 500, "decay_steps": 20000, "end_value": 1e-5},
    "b1": {"kind": "linear", "init_value": 0.85, "end_value": 0.95, "transition_steps": 5000},
    "b2": {"kind": "linear", "init_value": 0.99, "end_value": 0.999, "transition_steps": 5000},
    "weight_decay": {"kind": "cosine_decay", "init_value": 0.1, "decay_steps": 20000,
                     "alpha": 0.1},
}


def _setup(scheduled: bool):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999),
                                  weight_decay=0.1)
    scheduler = sched_torch.attach(optimizer, **SCHEDULES) if scheduled else None
    return model, optimizer, scheduler


def _block(model, optimizer, scheduler, batches) -> float:
    """Seconds per training update over one block."""
    loss_fn = torch.nn.functional.cross_entropy
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return (time.perf_counter() - start) / len(batches)


def test_bench_torch_adapter_overhead():
    torch.set_num_threads(os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, 64, generator=generator),
                torch.randint(0, 10, (64,), generator=generator)) for _ in range(STEPS_PER_BLOCK)]
    # A second, identical plain loop (A') measures the noise floor: what two loops that differ in
    # nothing but their tensors' memory and their turn in the order show on this machine.
    setups = {"A": _setup(False), "A'": _setup(False), "B": _setup(True)}
    for setup in setups.values():  # warm up allocators and kernels
        _block(*setup, batches)

    times: dict[str, list[float]] = {name: [] for name in setups}
    for rep in range(REPS):
        for name in (list(setups) if rep % 2 else list(setups)[::-1]):
            times[name].append(_block(*setups[name], batches))
    times_a, times_b = times["A"], times["B"]
    base, sched = statistics.median(times_a), statistics.median(times_b)
    overhead = 100.0 * (sched - base) / base
    paired = 100.0 * statistics.median((b - a) / a for a, b in zip(times_a, times_b))
    noise_floor = 100.0 * (statistics.median(times["A'"]) - base) / base

    scheduler = _setup(True)[2]
    calls = 200_000  # crosses hundreds of chunk boundaries, so chunk refills are included
    step_us = 1e6 * min(timeit.repeat(scheduler.step, number=calls, repeat=3)) / calls
    hook_us = 1e6 * min(timeit.repeat(scheduler._write, number=calls, repeat=3)) / calls
    isolated = 100.0 * (step_us + hook_us) * 1e-6 / base

    figures = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "workload": {"model": "MLP 64-256-256-10", "batch": 64, "optimizer": "AdamW",
                     "scheduled": sorted(SCHEDULES), "steps_per_block": STEPS_PER_BLOCK,
                     "reps": REPS},
        "constant_us_per_step_median": base * 1e6,
        "scheduled_us_per_step_median": sched * 1e6,
        "overhead_pct_of_medians": overhead,
        "overhead_pct_paired_median": paired,
        "noise_floor_pct_identical_loops": noise_floor,
        "adapter_step_us": step_us,
        "adapter_pre_hook_us": hook_us,
        "adapter_isolated_pct": isolated,
        "target_pct": TARGET_PCT,
        "target_met": overhead <= TARGET_PCT,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")

    rows = [
        ("constant hyperparameters (A)", f"{base * 1e6:9.1f} us/step"),
        ("4 scheduled hyperparameters (B)", f"{sched * 1e6:9.1f} us/step"),
        ("overhead, B vs A medians", f"{overhead:+9.2f} %"),
        ("overhead, median of paired blocks", f"{paired:+9.2f} %"),
        ("noise floor: A' (same as A) vs A", f"{noise_floor:+9.2f} %"),
        ("adapter: scheduler.step()", f"{step_us:9.2f} us"),
        ("adapter: optimizer pre-hook", f"{hook_us:9.2f} us"),
        ("adapter work / step (isolated)", f"{isolated:9.2f} %"),
    ]
    print(f"\nschedules.torch overhead: AdamW on MLP 64-256-256-10, batch 64, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"{REPS} interleaved A/B blocks of {STEPS_PER_BLOCK} steps")
    for label, value in rows:
        print(f"  {label:<36}{value}")
    verdict = "met" if overhead <= TARGET_PCT else "NOT met"
    print(f"  target <= {TARGET_PCT:.0f}% per step: {verdict}  (figures in {OUT})")
