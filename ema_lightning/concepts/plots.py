"""Figures of concept vectors (PNG files or RGB arrays for TensorBoard) and the study-report section."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ema_lightning.concepts import analysis
from ema_lightning.concepts.vectors import ConceptVectors
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


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def concept_report_section(
    base: ConceptVectors,
    after: ConceptVectors,
    drop: Mapping[str, float],
    target: str,
    out_dir: str | Path,
    layer_fraction: float = 1 / 3,
    layers: Sequence[int] | None = None,
    relative_to: str | Path | None = None,
) -> str:
    """Markdown section on concept vectors for one unlearning target; its PNGs are written to `out_dir`.

    `drop`: refusal drop per domain (baseline rate - rate after unlearning). The similarity that is
    correlated with the drop is each non-target domain's baseline cosine similarity to the target,
    averaged over `layers` (default: `early_layers(L, layer_fraction)`). Image links are relative to
    `relative_to` (default `out_dir`, i.e. the Markdown lives next to the images).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    relative_to = Path(relative_to) if relative_to is not None else out_dir
    n_layers = base.vectors.shape[1]
    early = range(0, 0) if layers is not None else analysis.early_layers(n_layers, layer_fraction)
    selected = list(layers) if layers is not None else list(early)
    bad = [layer for layer in selected if not 0 <= layer < n_layers]
    if bad or not selected:
        raise ValueError(f"concept_report_section: layers {bad or selected} outside 0..{n_layers - 1}")
    name = display_name(target)
    prefix = f"concepts_{target}"

    def link(file: Path, alt: str) -> str:
        return f"![{alt}]({Path(os.path.relpath(file, relative_to)).as_posix()})"

    early_layer, late_layer = selected[len(selected) // 2], n_layers - 1
    heatmaps = []
    for label, vectors in (("baseline", base), ("after unlearning", after)):
        cosines = analysis.cosine_matrix(vectors.vectors)
        for layer in (early_layer, late_layer):
            file = out_dir / f"{prefix}_cosine_{label.split()[0]}_layer{layer}.png"
            plot_cosine_heatmap(cosines[layer], DOMAINS, f"{label}, step {vectors.step}, layer {layer}", file)
            heatmaps.append(link(file, f"cosine {label} layer {layer}"))

    drift_file = plot_drift({after.step: analysis.drift(after.vectors, base.vectors)}, out_dir / f"{prefix}_drift.png")
    similarity = analysis.similarity_to_target(base.vectors, target)  # (D, L)
    curves_file = plot_similarity_curves(similarity, DOMAINS, target, out_dir / f"{prefix}_similarity.png",
                                         f"Baseline similarity to {name} per layer")
    drops = analysis.drop_tensor(dict(drop), exclude=target)
    early_similarity = similarity[:, selected].mean(dim=1)
    early_similarity[DOMAINS.index(target)] = float("nan")
    result = analysis.similarity_vs_drop(early_similarity, drops)
    scatter_file = plot_similarity_vs_drop(early_similarity, drops, DOMAINS, out_dir / f"{prefix}_similarity_vs_drop.png",
                                           f"Target {name}: similarity vs refusal drop")
    masked = similarity.clone()
    masked[DOMAINS.index(target)] = float("nan")
    per_layer = analysis.correlation_per_layer(masked, drops)
    per_layer_file = plot_correlation_per_layer(per_layer, out_dir / f"{prefix}_correlation_per_layer.png",
                                                early if layers is None else None, f"Target {name}: correlation per layer")

    layer_text = f"layers {selected[0]}-{selected[-1]}" if selected == list(range(selected[0], selected[-1] + 1)) else f"layers {selected}"
    lines = [
        f"### Concept vectors: unlearning {name}",
        "",
        f"Model `{base.model_name or 'unnamed'}`, {base.position} prompt token, {n_layers} layers (0 = embeddings); "
        f"baseline step {base.step}, after unlearning step {after.step}. Early layers: {layer_text}.",
        "",
        f"Domain x domain cosine similarity at layer {early_layer} (early) and layer {late_layer} (late), "
        "baseline (top) and after unlearning (bottom):",
        "",
        " ".join(heatmaps[:2]),
        "",
        " ".join(heatmaps[2:]),
        "",
        "Drift (cosine of each domain's vector after unlearning with its baseline vector) and baseline "
        f"similarity to {name} per layer:",
        "",
        f"{link(drift_file, 'drift')} {link(curves_file, 'similarity to target')}",
        "",
        f"| Domain | Early-layer similarity to {name} | Refusal drop |",
        "|---|---|---|",
    ]
    for i, domain in enumerate(DOMAINS):
        if domain != target:
            lines.append(f"| {DISPLAY_NAMES[domain]} | {_fmt(float(early_similarity[i]))} | {_fmt(float(drops[i]))} |")
    lines += [
        "",
        "| Correlation | Coefficient | p-value | n |",
        "|---|---|---|---|",
        f"| Spearman | {_fmt(result['spearman'][0])} | {_fmt(result['spearman'][1])} | {result['n']} |",
        f"| Pearson | {_fmt(result['pearson'][0])} | {_fmt(result['pearson'][1])} | {result['n']} |",
        "",
    ]
    if "note" in result:
        lines += [f"Note: {result['note']}.", ""]
    lines += [f"{link(scatter_file, 'similarity vs drop')} {link(per_layer_file, 'correlation per layer')}", ""]
    return "\n".join(lines)
