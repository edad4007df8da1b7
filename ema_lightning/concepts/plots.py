"""Figures of concept vectors: PNG files, or RGB arrays for TensorBoard.

The study report's concept section (its Markdown) is `ema_lightning.report.concepts`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ema_lightning.domains import DISPLAY_NAMES, DOMAINS, display_name

# Figures are built on the Agg canvas directly (no pyplot): no global state, safe in callbacks and threads.


def _figure(width: float = 6.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _labels(domains: Sequence[str]) -> list[str]:
    return [DISPLAY_NAMES.get(d, d) for d in domains]


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """The rendered figure as an `(H, W, 3)` uint8 array (TensorBoard `add_image(..., dataformats="HWC")`)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def cosine_heatmap_figure(matrix, domains: Sequence[str] = DOMAINS, title: str = "") -> Figure:
    """Domain x domain cosine similarity heatmap (values annotated, NaN cells blank)."""
    matrix = torch.as_tensor(matrix).float().numpy()
    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    labels = _labels(domains)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if math.isfinite(matrix[i, j]):
                color = "white" if abs(matrix[i, j]) > 0.6 else "black"
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_cosine_heatmap(matrix, domains: Sequence[str], title: str, path: str | Path) -> Path:
    return save_figure(cosine_heatmap_figure(matrix, domains, title), path)


def similarity_curves_figure(similarity, domains: Sequence[str], target: str, title: str = "") -> Figure:
    """Each domain's cosine similarity to the target per layer (the target itself left out)."""
    similarity = torch.as_tensor(similarity).float().numpy()
    fig = _figure()
    ax = fig.add_subplot()
    for row, domain in zip(similarity, domains, strict=True):
        if domain != target:
            ax.plot(range(len(row)), row, marker="o", markersize=3, label=DISPLAY_NAMES.get(domain, domain))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(f"cosine similarity to {display_name(target)}")
    ax.set_title(title or f"Similarity to {display_name(target)} per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_similarity_curves(similarity, domains: Sequence[str], target: str, path: str | Path, title: str = "") -> Path:
    return save_figure(similarity_curves_figure(similarity, domains, target, title), path)


def drift_figure(drift_by_step: Mapping[int, torch.Tensor], domains: Sequence[str] = DOMAINS) -> Figure:
    """Drift (cosine now vs baseline) per layer at the latest step; with several steps, also layer-mean drift vs step."""
    if not drift_by_step:
        raise ValueError("drift_figure: drift_by_step is empty")
    steps = sorted(drift_by_step)
    latest = torch.as_tensor(drift_by_step[steps[-1]]).float().numpy()
    fig = _figure(11 if len(steps) > 1 else 6, 4.5)
    ax = fig.add_subplot(1, 2 if len(steps) > 1 else 1, 1)
    for row, domain in zip(latest, domains, strict=True):
        ax.plot(range(len(row)), row, marker="o", markersize=3, label=DISPLAY_NAMES.get(domain, domain))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("cosine(now, baseline)")
    ax.set_title(f"Concept drift at step {steps[-1]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if len(steps) > 1:
        ax2 = fig.add_subplot(1, 2, 2)
        means = np.stack([np.nanmean(torch.as_tensor(drift_by_step[s]).float().numpy(), axis=1) for s in steps])
        for column, domain in enumerate(domains):
            ax2.plot(steps, means[:, column], marker="o", markersize=3, label=DISPLAY_NAMES.get(domain, domain))
        ax2.set_xlabel("training step")
        ax2.set_ylabel("mean cosine over layers")
        ax2.set_title("Concept drift over training")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_drift(drift_by_step: Mapping[int, torch.Tensor], path: str | Path, domains: Sequence[str] = DOMAINS) -> Path:
    return save_figure(drift_figure(drift_by_step, domains), path)


def plot_similarity_vs_drop(similarity, drop, domains: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Scatter of early-layer similarity to the target against refusal drop, one labelled point per domain."""
    fig = _figure()
    ax = fig.add_subplot()
    for x, y, domain in zip(torch.as_tensor(similarity).tolist(), torch.as_tensor(drop).tolist(), domains, strict=True):
        if math.isfinite(x) and math.isfinite(y):
            ax.scatter(x, y)
            ax.annotate(DISPLAY_NAMES.get(domain, domain), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("early-layer cosine similarity to the target")
    ax.set_ylabel("refusal drop")
    ax.set_title(title or "Similarity to the target vs refusal drop")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_correlation_per_layer(per_layer: Sequence[dict], path: str | Path, early: range | None = None, title: str = "") -> Path:
    """Spearman and Pearson correlation (similarity vs drop) per layer; the early-layer range shaded."""
    fig = _figure()
    ax = fig.add_subplot()
    layers = [entry["layer"] for entry in per_layer]
    ax.plot(layers, [entry["spearman"][0] for entry in per_layer], marker="o", markersize=3, label="Spearman")
    ax.plot(layers, [entry["pearson"][0] for entry in per_layer], marker="s", markersize=3, label="Pearson")
    if early is not None and len(early):
        ax.axvspan(early[0] - 0.5, early[-1] + 0.5, color="grey", alpha=0.15, label="early layers")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("correlation with refusal drop")
    ax.set_title(title or "Similarity-vs-drop correlation per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
