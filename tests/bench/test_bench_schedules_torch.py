"""Per-step overhead of ``schedules.torch`` driving four AdamW hyperparameters (target: <= 1%).

One MLP training loop runs in short blocks of three kinds: A with constant hyperparameters, B with
its learning rate, b1, b2 and weight decay following schedules, and A', a second constant block:
how far it lands from A is the noise floor of the comparison. All three train the same model with
the same optimizer and scheduler (the scheduler's pre-hook is in place, and ``scheduler.step()``
called, in B blocks only), so no kind has its own tensors' memory layout: separate but identical
models differed by 2% on this machine, more than the effect measured. Each round runs the blocks in
another of the six orders of A, A' and B, so every kind takes every turn equally often and drift
in the machine's speed hits all alike; medians are reported, of the blocks and of the per-round
ratios. The adapter's own work per update (``scheduler.step()`` and the optimizer step pre-hook,
called as torch calls it) is also timed in isolation, and in place inside the training loop
(probes around the two calls, less the same probes around nothing in constant blocks): figures
that a busy machine moves far less than the loop-level ones, the in-loop one the closer to what a
step pays. Figures go to ``bench-out/schedules_torch.json``; the target is reported, not asserted.

Torch runs one thread (``SWEEP_BENCH_THREADS`` sets another count): on the 2-core machine, shared
with other work, two OpenMP threads made a step up to 30 times slower whenever one core was taken,
while one thread is as fast as two on a quiet machine at this size.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import os
import platform
import statistics
import time
import timeit
from pathlib import Path

import torch

import schedules.torch as sched_torch

TARGET_PCT = 1.0
STEPS_PER_BLOCK = 50
REPS = 120  # a multiple of 6: each of the six orders of A, A', B equally often
PROBE_REPS = 40  # rounds of A and B blocks with the adapter's calls timed in place
THREADS = int(os.environ.get("SWEEP_BENCH_THREADS", "1"))
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


class _Probes:
    """Nanoseconds, per update, spent in the optimizer's step pre-hooks (between a probe hook
    registered before the scheduler's and one after it) and in the ``scheduler.step()`` call."""

    def __init__(self) -> None:
        self.hooks: list[int] = []
        self.steps: list[int] = []
        self._started = 0

    def start(self, *_) -> None:
        self._started = time.perf_counter_ns()

    def stop(self, *_) -> None:
        self.hooks.append(time.perf_counter_ns() - self._started)


def _probed_block(model, optimizer, scheduler, batches, probes: _Probes) -> None:
    """A block like :func:`_block` whose adapter calls are timed in place, caches as cold as a
    training step leaves them; a constant block times the same probes around nothing."""
    loss_fn = torch.nn.functional.cross_entropy
    clock = time.perf_counter_ns
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        started = clock()
        if scheduler is not None:
            scheduler.step()
        probes.steps.append(clock() - started)


class _Loop:
    """One model, optimizer and scheduler. A block of kind B runs with the scheduler's step
    pre-hook (its guard) in place and calls ``scheduler.step()``; a constant block runs with no
    pre-hook and no scheduler call, the scheduler waiting, untouched, for the next B block."""

    def __init__(self) -> None:
        self.model, self.optimizer, self.scheduler = _setup(True)
        self.hooks = self.optimizer._optimizer_step_pre_hooks  # torch's dict, in calling order
        self.guard = dict(self.hooks)
        self.hooks.clear()

    def block(self, kind: str, batches, probes: _Probes | None = None) -> float:
        scheduler = self.scheduler if kind == "B" else None
        if probes:
            self.hooks["probe start"] = probes.start
        if scheduler is not None:
            self.hooks.update(self.guard)
        if probes:
            self.hooks["probe stop"] = probes.stop
        gc.collect()  # every block starts from the same collector state
        try:
            if probes:
                _probed_block(self.model, self.optimizer, scheduler, batches, probes)
                return 0.0
            return _block(self.model, self.optimizer, scheduler, batches)
        finally:
            self.hooks.clear()


def test_bench_torch_adapter_overhead():
    torch.set_num_threads(THREADS)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, 64, generator=generator),
                torch.randint(0, 10, (64,), generator=generator)) for _ in range(STEPS_PER_BLOCK)]
    loop = _Loop()
    kinds = ("A", "A'", "B")
    for kind in kinds:  # warm up allocators and kernels
        loop.block(kind, batches)

    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    orders = list(itertools.permutations(kinds))
    for rep in range(REPS):
        for kind in orders[rep % len(orders)]:
            times[kind].append(loop.block(kind, batches))
    times_a, times_b = times["A"], times["B"]
    base, sched = statistics.median(times_a), statistics.median(times_b)
    overhead = 100.0 * (sched - base) / base
    paired = 100.0 * statistics.median((b - a) / a for a, b in zip(times_a, times_b))
    noise_floor = 100.0 * (statistics.median(times["A'"]) - base) / base
    noise_paired = 100.0 * statistics.median((b - a) / a for a, b in zip(times_a, times["A'"]))

    _, optimizer, scheduler = _setup(True)
    pre_hook, = optimizer._optimizer_step_pre_hooks.values()  # the guard, as torch calls it
    calls = 200_000  # crosses hundreds of chunk boundaries, so chunk refills are included
    step_us = 1e6 * min(timeit.repeat(scheduler.step, number=calls, repeat=3)) / calls
    hook_us = 1e6 * min(timeit.repeat(functools.partial(pre_hook, optimizer, (), {}),
                                      number=calls, repeat=3)) / calls
    isolated = 100.0 * (step_us + hook_us) * 1e-6 / base

    # The same calls timed inside the training loop: what they cost between torch's kernels.
    probes = {kind: _Probes() for kind in ("A", "B")}
    for rep in range(PROBE_REPS):
        for kind in ("A", "B") if rep % 2 else ("B", "A"):
            loop.block(kind, batches, probes[kind])
    in_step_us = 1e-3 * (statistics.median(probes["B"].steps)
                         - statistics.median(probes["A"].steps))
    in_hook_us = 1e-3 * (statistics.median(probes["B"].hooks)
                         - statistics.median(probes["A"].hooks))
    in_loop = 100.0 * (in_step_us + in_hook_us) * 1e-6 / base

    figures = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "workload": {"model": "MLP 64-256-256-10", "batch": 64, "optimizer": "AdamW",
                     "scheduled": sorted(SCHEDULES), "steps_per_block": STEPS_PER_BLOCK,
                     "reps": REPS, "updates_scheduled": loop.scheduler.last_epoch},
        "load_average": os.getloadavg(),
        "constant_us_per_step_median": base * 1e6,
        "scheduled_us_per_step_median": sched * 1e6,
        "overhead_pct_of_medians": overhead,
        "overhead_pct_paired_median": paired,
        "noise_floor_pct_identical_loops": noise_floor,
        "noise_floor_pct_paired_median": noise_paired,
        "samples_us_per_step": {name: [t * 1e6 for t in ts] for name, ts in times.items()},
        "adapter_step_us": step_us,
        "adapter_pre_hook_us": hook_us,
        "adapter_isolated_pct": isolated,
        "adapter_in_loop_step_us": in_step_us,
        "adapter_in_loop_pre_hook_us": in_hook_us,
        "adapter_in_loop_pct": in_loop,
        "probe_updates": len(probes["B"].steps),
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
        ("noise floor, paired", f"{noise_paired:+9.2f} %"),
        ("adapter: scheduler.step()", f"{step_us:9.2f} us"),
        ("adapter: optimizer pre-hook", f"{hook_us:9.2f} us"),
        ("adapter work / step (isolated)", f"{isolated:9.2f} %"),
        ("in the loop: scheduler.step()", f"{in_step_us:9.2f} us"),
        ("in the loop: optimizer pre-hook", f"{in_hook_us:9.2f} us"),
        ("adapter work / step (in the loop)", f"{in_loop:9.2f} %"),
    ]
    print(f"\nschedules.torch overhead: AdamW on MLP 64-256-256-10, batch 64, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"{REPS} interleaved rounds of A/A'/B blocks of {STEPS_PER_BLOCK} steps, "
          f"load average {os.getloadavg()[0]:.2f}")
    for label, value in rows:
        print(f"  {label:<36}{value}")
    verdict = "met" if overhead <= TARGET_PCT else "NOT met"
    print(f"  target <= {TARGET_PCT:g}% per step: {verdict}  (figures in {OUT})")
