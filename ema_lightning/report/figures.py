"""Figures of the study report: refusal per domain as grouped bars, refusal curves over training, and
the method comparison (target against off-target refusal, one point per run and seed).

Drawn on the Agg canvas directly (no pyplot): no global state, safe in callbacks and threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ema_lightning.domains import DISPLAY_NAMES, DOMAINS
from ema_lightning.results import RunResult, nanmean


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def refusal_curves_figure(run: RunResult) -> Figure:
    """Refusal per domain over training steps (baseline at step 0); the target drawn dashed and thicker."""
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    evaluations = sorted(run.evaluations, key=lambda e: e.step)
    steps = [e.step for e in evaluations]
    for d in DOMAINS:
        is_target = d == run.target
        ax.plot(steps, [e.refusal[d] for e in evaluations], "--" if is_target else "-", marker="o", ms=3,
                lw=2.2 if is_target else 1.3, label=DISPLAY_NAMES[d])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("training step")
    ax.set_ylabel("refusal rate (harmful prompts)")
    ax.set_title(run.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    return fig


def plot_refusal_curves(run: RunResult, path: Path) -> Path:
    return _save(refusal_curves_figure(run), path)


def bars_figure(title: str, columns: Mapping[str, Mapping[str, float]], target: Optional[str] = None) -> Figure:
    """Grouped bars: refusal per domain for each column (base / unlearned / contained); `*` marks the target."""
    fig = _figure(7.2, 3.4)
    ax = fig.add_subplot()
    width = 0.8 / max(len(columns), 1)
    for k, (label, rates) in enumerate(columns.items()):
        xs = [i + (k - (len(columns) - 1) / 2) * width for i in range(len(DOMAINS))]
        ax.bar(xs, [rates.get(d, float("nan")) for d in DOMAINS], width, label=label)
    ax.set_xticks(range(len(DOMAINS)))
    ax.set_xticklabels([DISPLAY_NAMES[d] + ("*" if d == target else "") for d in DOMAINS], rotation=20, fontsize=8)
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("refusal rate")
    ax.set_title(title + ("  (* = target)" if target else ""))
    ax.legend(fontsize=8, ncol=max(len(columns), 1), loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_bars(title: str, columns: Mapping[str, Mapping[str, float]], path: Path, target: Optional[str] = None) -> Path:
    return _save(bars_figure(title, columns, target), path)


MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def methods_figure(runs: Sequence[RunResult]) -> Figure:
    """Final target refusal (x) against mean off-target refusal (y), one point per run and seed: colour
    per method, marker per target, hollow when contained (retain loss); each target's baseline a black
    star. Methods are offset slightly sideways so that points on the same spot stay visible."""
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    methods = sorted({r.method for r in runs})
    targets = sorted({r.target for r in runs if r.target is not None})
    colours = {m: f"C{k % 10}" for k, m in enumerate(methods)}
    markers = {t: MARKERS[k % len(MARKERS)] for k, t in enumerate(targets)}
    for r in runs:
        final = r.final
        if final is None or r.target is None:
            continue
        shift = 0.012 * (methods.index(r.method) - (len(methods) - 1) / 2)
        x, y = final.refusal[r.target], _off_target(final, r.target)
        ax.scatter([x + shift], [y], s=46, marker=markers[r.target], linewidths=1.4,
                   facecolors="none" if r.contained else colours[r.method], edgecolors=colours[r.method])
    for t in targets:
        base = next((r.baseline for r in runs if r.target == t and r.baseline is not None), None)
        if base is not None:
            ax.scatter([base.refusal[t]], [_off_target(base, t)], s=120, marker="*", color="black", zorder=3)
    handles = [Line2D([], [], ls="", marker="o", color=colours[m], label=m) for m in methods]
    handles += [Line2D([], [], ls="", marker=markers[t], color="gray", label=f"target {DISPLAY_NAMES.get(t, t)}")
                for t in targets]
    handles += [Line2D([], [], ls="", marker="o", mfc="none", color="gray", label="contained (retain loss)"),
                Line2D([], [], ls="", marker="*", ms=10, color="black", label="base")]
    ax.set_xlim(-0.06, 1.06)
    ax.set_ylim(-0.06, 1.06)
    ax.set_xlabel("target refusal (harmful prompts)")
    ax.set_ylabel("mean refusal, six other domains")
    ax.set_title("method comparison: target vs off-target refusal")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def _off_target(evaluation, target: str) -> float:
    return nanmean(v for d, v in evaluation.refusal.rates.items() if d != target)


def plot_methods(runs: Sequence[RunResult], path: Path) -> Path:
    return _save(methods_figure(runs), path)
