"""Figures of the study report: refusal per domain as grouped bars, refusal curves over training.

Drawn on the Agg canvas directly (no pyplot): no global state, safe in callbacks and threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ema_lightning.domains import DISPLAY_NAMES, DOMAINS
from ema_lightning.results import RunResult


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
