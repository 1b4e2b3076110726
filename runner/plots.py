"""PNG plots of a run dir: optimization history, intermediate curves, the best trials' schedules,
parameter importances.

Each PNG carries a ``sweep.plot`` text chunk: its axes (title, labels, scales) and series (label,
points), read back from the figure itself, so a test or a script can check what a plot shows.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import yaml  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import schedules  # noqa: E402
from runner.records import RunRecords, filesystem  # noqa: E402

SIZE, DPI = (8.0, 4.5), 120
DECADES_FOR_LOG = 2  # values spanning this many powers of ten get a log axis
COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red"}


@dataclass
class PlotSet:
    """The PNGs written, and one line for each plot left out (and why)."""

    paths: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _config(run_dir: str) -> dict:
    fs, root = filesystem(run_dir)
    with fs.open_input_stream(f"{root}/config.yaml") as f:
        return yaml.safe_load(f.read())


def plot_run(run_dir: str, out: str, best: int = 3) -> PlotSet:
    """Write history.png, curves.png, schedules.png, importances.png and, for PBT,
    population.png into ``out``.

    A run with no completed trial gets no PNGs, only a note: empty axes would read as a bug.
    """
    config = _config(run_dir)
    objective = config["objective"][0] if isinstance(config["objective"], list) else config["objective"]
    metric, direction = objective["metric"], objective.get("direction", "minimize")
    records = RunRecords(run_dir)
    rows = sorted(records.read("trials").to_pylist(), key=lambda r: r["number"])
    trials = [r for r in rows if r["rung"] is None]  # cooldown branches score these
    branch_of = {r["number"]: r["parent"] for r in rows if r["rung"] is not None}
    history = [h for h in records.read("history").to_pylist()
               if h["metric"] == metric and h["trial"] not in branch_of]
    branch_history = [h for h in records.read("history").to_pylist()
                      if h["metric"] == metric and h["trial"] in branch_of]
    done = [t for t in trials if t["state"] == "COMPLETE" and _finite(t["value"])]
    result = PlotSet()
    if not done:
        result.notes.append(f"no completed trial with a finite {metric} yet: no plots")
        return result
    os.makedirs(out, exist_ok=True)
    top = sorted(done, key=lambda t: t["value"], reverse=direction == "maximize")[:best]
    figures = {
        "history.png": history_figure(trials, history, metric, direction),
        "curves.png": curves_figure(trials, history, metric, [t["number"] for t in top],
                                    branch_history, branch_of),
        "schedules.png": schedules_figure(top, int(config["budget"]["steps"])),
    }
    exploits = records.read("lineage").to_pylist()
    applied = records.read("applied").to_pylist() if exploits else []
    if applied:
        figures["population.png"] = population_figure(applied, exploits)
    elif exploits:
        result.notes.append("no applied hyperparameters recorded (the trainable's optimizer is "
                            "not tracked): no population plot")
    importances = importances_figure(run_dir, metric) if not exploits else (
        "no parameter importances for PBT: a member's values change at each exploit, so the "
        "sampled ones it started from explain little")
    if isinstance(importances, str):
        result.notes.append(importances)
    else:
        figures["importances.png"] = importances
    for name, fig in figures.items():
        result.paths.append(save(fig, os.path.join(out, name)))
    return result


def _finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)


def _log_axis(ax: plt.Axes, values: list[float]) -> None:
    """A log axis when the (positive) values span decades: one diverged trial then cannot
    flatten every other curve into a line."""
    shown = [v for v in values if _finite(v)]
    if shown and min(shown) > 0 and math.log10(max(shown) / min(shown)) >= DECADES_FOR_LOG:
        ax.set_yscale("log")


def _left_out(values: list[float]) -> str:
    dropped = sum(1 for v in values if not _finite(v))
    return f" ({dropped} non-finite not shown)" if dropped else ""


def history_figure(trials: list[dict], history: list[dict], metric: str,
                   direction: str) -> Figure:
    """Completed trials' values, pruned trials' last values, and the best so far."""
    fig, ax = plt.subplots(figsize=SIZE)
    done = [t for t in trials if t["state"] == "COMPLETE"]
    last = {}
    for h in sorted(history, key=lambda h: h["step"]):
        last[h["trial"]] = h["value"]
    pruned = [(t["number"], last[t["number"]]) for t in trials
              if t["state"] == "PRUNED" and t["number"] in last]
    values = [t["value"] for t in done] + [v for _, v in pruned]
    shown = [t for t in done if _finite(t["value"])]
    ax.scatter([t["number"] for t in shown], [t["value"] for t in shown], s=18,
               color=COLORS["COMPLETE"], label="complete", zorder=3)
    if pruned:
        kept = [(n, v) for n, v in pruned if _finite(v)]
        ax.scatter([n for n, _ in kept], [v for _, v in kept], s=22, marker="x",
                   color=COLORS["PRUNED"], label="pruned (last value)", zorder=3)
    sign = 1 if direction == "minimize" else -1
    running, bests = math.inf, []
    for t in shown:
        running = min(running, sign * t["value"])
        bests.append(sign * running)
    ax.step([t["number"] for t in shown], bests, where="post", color="tab:red",
            label="best so far")
    _log_axis(ax, values)
    ax.set(xlabel="trial", ylabel=metric, title=f"optimization history{_left_out(values)}")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def curves_figure(trials: list[dict], history: list[dict], metric: str, best: list[int],
                  branch_history: list[dict] = (), branch_of: dict[int, int] = {}) -> Figure:
    """Every trial's curve, labelled by trial number at its end; the best few in colour, with
    their cooldown branches (``branch_of``: branch -> trunk) dotted, a dot at each rung score."""
    fig, ax = plt.subplots(figsize=SIZE)
    states = {t["number"]: t["state"] for t in trials}
    curves: dict[int, list[tuple[int, float]]] = {}
    for h in history:
        curves.setdefault(h["trial"], []).append((h["step"], h["value"]))
    palette = plt.get_cmap("tab10")
    for number, points in sorted(curves.items()):
        points = sorted(p for p in points if _finite(p[1]))
        if not points:
            continue
        steps, values = zip(*points)
        if number in best:
            rank = best.index(number)
            ax.plot(steps, values, color=palette(rank), lw=2.2, zorder=3,
                    label=f"trial {number} (#{rank + 1})")
        else:
            style = "--" if states.get(number) == "PRUNED" else "-"
            ax.plot(steps, values, color="0.6", lw=0.9, ls=style, alpha=0.8,
                    label=f"trial {number}")
        ax.annotate(str(number), (steps[-1], values[-1]), fontsize=7, color="0.3",
                    xytext=(2, 0), textcoords="offset points")
    branches: dict[int, list[tuple[int, float]]] = {}
    for h in branch_history:
        if branch_of[h["trial"]] in best and _finite(h["value"]):
            branches.setdefault(h["trial"], []).append((h["step"], h["value"]))
    for number, points in sorted(branches.items()):
        steps, values = zip(*sorted(points))
        ax.plot(steps, values, color=palette(best.index(branch_of[number])), lw=1.2, ls=":",
                marker="o", markevery=[len(steps) - 1], ms=4, zorder=4,
                label=f"cooldown branch {number} of trial {branch_of[number]}")
    values = [h["value"] for h in history] + [v for points in branches.values() for _, v in points]
    _log_axis(ax, values)
    dotted = ", their cooldown branches dotted" if branches else ""
    ax.set(xlabel="step", ylabel=metric,
           title=f"intermediate {metric}: best {len(best)} in colour{dotted}, pruned dashed"
                 f"{_left_out(values)}")
    ax.grid(alpha=0.3)
    handles = sorted((h for h in ax.get_lines() if h.get_label().endswith(")")),
                     key=lambda h: h.get_label().rsplit("#", 1)[-1])
    ax.legend(handles=handles, fontsize=8)
    return fig


def schedules_figure(top: list[dict], steps: int) -> Figure:
    """Each scheduled hyperparameter of the best trials against the step."""
    names = sorted({n for t in top for n in json.loads(t["schedules"])})
    rows = max(1, len(names))
    fig, axes = plt.subplots(rows, 1, figsize=(SIZE[0], 2.4 * rows), squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names):
        for t in top:
            spec = json.loads(t["schedules"]).get(name)
            if spec is None or schedules.from_spec(spec).stateful:
                continue
            ax.plot(schedules.from_spec(spec).values(0, steps),
                    label=f"trial {t['number']} ({t['value']:.4g})")
        _log_axis(ax, [v for line in ax.get_lines() for v in line.get_ydata()])
        ax.set(ylabel=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"schedules of the best {len(top)} trials")
    return fig


def population_figure(applied: list[dict], exploits: list[dict]) -> Figure:
    """A PBT population: each member's applied hyperparameters over steps, a marker where it
    exploited another member (the values jump to the donor's, explored)."""
    names = sorted({a["hyperparameter"] for a in applied if "." not in a["hyperparameter"]})
    explored = {(e["member"], e["step"]): json.loads(e["new"]) for e in exploits}
    applied = [dict(a, value=_explored(a, explored)) for a in applied]
    rows = max(1, len(names))
    fig, axes = plt.subplots(rows, 1, figsize=(SIZE[0], 2.4 * rows), squeeze=False, sharex=True)
    palette = plt.get_cmap("tab10")
    members = sorted({a["trial"] for a in applied})
    for ax, name in zip(axes[:, 0], names):
        for index, member in enumerate(members):
            points = sorted((a["step"], a["value"]) for a in applied
                            if a["trial"] == member and a["hyperparameter"] == name)
            if points:
                ax.step(*zip(*points), where="post", color=palette(index % 10), lw=1.2,
                        label=f"member {member}")
        marks = [(e["step"], _value_after(applied, e, name)) for e in exploits]
        marks = [m for m in marks if m[1] is not None]
        if marks:
            ax.scatter(*zip(*marks), marker="v", color="k", s=22, zorder=4, label="exploit")
        _log_axis(ax, [a["value"] for a in applied if a["hyperparameter"] == name])
        ax.set(ylabel=name)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"population: applied hyperparameters, {len(exploits)} exploits")
    return fig


def _explored(row: dict, explored: dict[tuple, dict]) -> float:
    """An applied value, except at an exploit's step (``explored``: member, step -> the new
    specs): its report came before the exploit, so the next update uses the explored value."""
    spec = explored.get((row["trial"], row["step"]), {}).get(row["hyperparameter"])
    return row["value"] if spec is None else float(schedules.from_spec(spec)(row["step"]))


def _value_after(applied: list[dict], exploit: dict, name: str) -> Optional[float]:
    """The member's value from the exploit's step on."""
    at = [a["value"] for a in applied if a["trial"] == exploit["member"]
          and a["hyperparameter"] == name and a["step"] == exploit["step"]]
    return at[0] if at else None


def importances_figure(run_dir: str, metric: str) -> Figure | str:
    """Optuna's parameter importances (fANOVA) over the completed trials, or why there are none."""
    import optuna
    from optuna.trial import TrialState

    from runner.report import study_trials
    from runner.rundir import RunDir

    done = [t for t in study_trials(RunDir(run_dir)) or []  # forks, branches: nothing sampled
            if t.state == TrialState.COMPLETE and t.distributions]
    varied = {name for t in done for name, dist in t.distributions.items()
              if not dist.single()}
    if len(done) < 2 or not varied:
        return "parameter importances need 2 completed trials with sampled parameters"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory" line
    study = optuna.create_study(directions=["minimize"] * len(done[0].values))  # any: unused
    optuna.logging.set_verbosity(verbosity)
    study.add_trials(done)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
        ax = optuna.visualization.matplotlib.plot_param_importances(
            study, target=(lambda t: t.values[0]) if len(done[0].values) > 1 else None,
            target_name=metric)
    fig = ax.figure
    fig.set_size_inches(*SIZE)
    ax.set_title("", loc="left")  # optuna's own title, which ours would overlap
    ax.set_title(f"parameter importances for {metric} ({len(done)} completed trials)",
                 fontsize="medium")  # the long tick labels leave the axes narrow
    return fig


def describe(fig: Figure) -> dict:
    """What a figure shows: per axes its title, labels, scales and series (label, points)."""
    axes = []
    for ax in fig.axes:
        series = [{"label": line.get_label(), "points": len(line.get_xdata())}
                  for line in ax.get_lines() if not line.get_label().startswith("_")]
        series += [{"label": coll.get_label(), "points": len(coll.get_offsets())}
                   for coll in ax.collections if not coll.get_label().startswith("_")]
        series += [{"label": bar.get_label(), "points": len(bar)} for bar in ax.containers
                   if not bar.get_label().startswith("_")]
        axes.append({"title": ax.get_title(), "side_titles": [ax.get_title(loc) for loc in (
                         "left", "right") if ax.get_title(loc)], "xlabel": ax.get_xlabel(),
                     "ylabel": ax.get_ylabel(), "xscale": ax.get_xscale(),
                     "yscale": ax.get_yscale(), "series": series,
                     "yticklabels": [t.get_text() for t in ax.get_yticklabels() if t.get_text()]})
    return {"axes": axes}


def save(fig: Figure, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"sweep.plot": json.dumps(describe(fig))})
    plt.close(fig)
    return path
