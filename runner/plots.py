"""PNG plots of a run dir: optimization history, intermediate curves, the best trials' schedules."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import yaml  # noqa: E402

import schedules  # noqa: E402
from runner.records import RunRecords, filesystem  # noqa: E402


def _config(run_dir: str) -> dict:
    fs, root = filesystem(run_dir)
    with fs.open_input_stream(f"{root}/config.yaml") as f:
        return yaml.safe_load(f.read())


def plot_run(run_dir: str, out: str, best: int = 3) -> list[str]:
    """Write history.png, curves.png and schedules.png into ``out``; return their paths."""
    config = _config(run_dir)
    objective = config["objective"][0] if isinstance(config["objective"], list) else config["objective"]
    metric, direction = objective["metric"], objective.get("direction", "minimize")
    records = RunRecords(run_dir)
    trials = sorted(records.read("trials").to_pylist(), key=lambda r: r["number"])
    history = records.read("history").to_pylist()
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, name) for name in ("history.png", "curves.png", "schedules.png")]

    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in trials if t["state"] == "COMPLETE"]
    ax.scatter([t["number"] for t in done], [t["value"] for t in done], s=14, label="trial")
    running_best, bests = None, []
    for t in done:
        better = running_best is None or (t["value"] < running_best if direction == "minimize"
                                          else t["value"] > running_best)
        running_best = t["value"] if better else running_best
        bests.append(running_best)
    ax.step([t["number"] for t in done], bests, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title="optimization history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    states = {t["number"]: t["state"] for t in trials}
    colors = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red"}
    for number in sorted({h["trial"] for h in history}):
        points = sorted((h["step"], h["value"]) for h in history
                        if h["trial"] == number and h["metric"] == metric)
        if points:
            ax.plot(*zip(*points), color=colors.get(states.get(number), "tab:gray"), alpha=0.6,
                    lw=1)
    ax.set(xlabel="step", ylabel=metric, title="intermediate values (blue complete, orange pruned)")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    top = sorted(done, key=lambda t: t["value"], reverse=direction == "maximize")[:best]
    names = sorted({n for t in top for n in json.loads(t["schedules"])})
    steps = int(config["budget"]["steps"])
    fig, axes = plt.subplots(max(1, len(names)), 1, figsize=(7, 2.2 * max(1, len(names))),
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        for t in top:
            schedule = schedules.from_spec(json.loads(t["schedules"])[name])
            if schedule.stateful:
                continue
            ax.plot(schedule.values(0, steps), label=f"trial {t['number']} ({t['value']:.4g})")
        ax.set(ylabel=name)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"schedules of the best {len(top)} trials")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths
