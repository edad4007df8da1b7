"""The concept-vector sections of the study report: one per unlearning target.

Each reads the run's `<log_dir>/concept_vectors/step=*.safetensors` (first and last step), draws its
figures with `ema_lightning.concepts.plots` and correlates each domain's baseline similarity to the
target with how far unlearning pushed that domain's refusal.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ema_lightning.concepts import analysis
from ema_lightning.concepts.plots import (
    plot_correlation_per_layer,
    plot_cosine_heatmap,
    plot_drift,
    plot_similarity_curves,
    plot_similarity_vs_drop,
)
from ema_lightning.concepts.vectors import ConceptVectors
from ema_lightning.domains import DISPLAY_NAMES, DOMAINS, display_name
from ema_lightning.results import RunResult
from ema_lightning.susceptibility import susceptibility


def concept_sections(runs: Sequence[RunResult], report_dir: Path) -> list[str]:
    """One section per target, from its unlearning run without the retain loss (else any run on it).

    Figures go to `<report_dir>/figures`; a target whose run saved fewer than two concept-vector
    files, or lacks a baseline or final evaluation, gets no section."""
    report_dir = Path(report_dir)
    sections = []
    for target in sorted({r.target for r in runs if r.target is not None}):
        inputs = _section_inputs(runs, target)
        if inputs is None:
            continue
        run, seeds, files = inputs
        base, after = ConceptVectors.load(files[0]), ConceptVectors.load(files[-1])
        drop, measure = susceptibility_of(seeds)
        sections.append(f"\n## Concept vectors: target {target} (run `{run.group}`)\n")
        sections.append(f"Refusal drop in this section is each domain's {measure}.\n")
        sections.append(concept_section(base, after, drop, target, report_dir / "figures", relative_to=report_dir))
    return sections


def _section_inputs(runs: Sequence[RunResult], target: str):
    """(run, its seeds, its concept-vector files in step order) of `target`'s section; None when the run
    saved fewer than two files or lacks a baseline or final evaluation."""
    on_target = [r for r in runs if r.target == target]
    run = next((r for r in on_target if not r.contained), on_target[0])
    files = sorted(Path(run.log_dir, "concept_vectors").glob("step=*.safetensors"), key=lambda p: int(p.stem.split("=")[1]))
    if len(files) < 2 or run.baseline is None or run.final is None:
        return None
    return run, [r for r in on_target if r.group == run.group], files


def similarity_correlation(runs: Sequence[RunResult], target: str) -> tuple[str, dict] | None:
    """The correlation `target`'s concept section reports: (its run's group, `analysis.similarity_vs_drop`
    of the early-layer similarity to the target with the refusal drop); None when it has no section."""
    inputs = _section_inputs(runs, target)
    if inputs is None:
        return None
    run, seeds, files = inputs
    base = ConceptVectors.load(files[0])
    selected = list(analysis.early_layers(base.vectors.shape[1]))
    similarity = analysis.similarity_to_target(base.vectors, target)
    return run.group, _early_correlation(similarity, selected, susceptibility_of(seeds)[0], target)[2]


def _early_correlation(similarity, selected: Sequence[int], drop: Mapping[str, float], target: str):
    """(early-layer similarity, drop tensor, their `similarity_vs_drop`), the target left out of both."""
    drops = analysis.drop_tensor(dict(drop), exclude=target)
    early_similarity = similarity[:, selected].mean(dim=1)
    early_similarity[DOMAINS.index(target)] = float("nan")
    return early_similarity, drops, analysis.similarity_vs_drop(early_similarity, drops)


def susceptibility_of(seeds: Sequence[RunResult]) -> tuple[dict[str, float], str]:
    """What the similarity is correlated with, per domain, and a sentence on what it measures: with at
    least two evaluations after the baseline, the share of refusal lost over training (1 - the area
    under the refusal curve, mean over seeds), or, where every domain's rate fell alike, the same of
    its refusal log-odds; else the drop in refusal log-odds, or in refusal rate."""
    def varies(values: Mapping[str, float]) -> bool:  # over the domains the correlation ranks
        return len({round(v, 9) for d, v in values.items() if d != seeds[0].target and not math.isnan(v)}) > 1

    if all(sum(e.stage == "val" for e in r.evaluations) >= 2 for r in seeds):
        lost = susceptibility(seeds)
        if varies(lost):
            return lost, (
                "share of refusal lost over training: 1 - the area under its refusal curve relative to keeping the "
                f"baseline (held-out harmful prompts, every evaluation of the run, mean over {len(seeds)} seed(s)); "
                "it orders domains by how soon and how far they lost their refusals, where the final rate is "
                "often 0% everywhere")
        by_score = susceptibility(seeds, scores=True)
        if varies(by_score):
            return by_score, (
                "share of refusal log-odds lost over training: 1 - the area under its mean refusal log-odds curve "
                f"relative to its baseline (every evaluation, mean over {len(seeds)} seed(s)); the refusal rates of "
                "all domains fell alike, so the log-odds, which keep moving where rates sit at 0% or 100%, order them")
    base, after = seeds[0].baseline, seeds[0].final
    if base.refusal_score is not None and after.refusal_score is not None:
        return {d: base.refusal_score[d] - after.refusal_score[d] for d in DOMAINS}, (
            "drop in mean refusal log-odds on its held-out harmful prompts, from before to after unlearning "
            "(log-sum-exp of refusal first-token logits minus that of compliance first tokens)")
    return {d: base.refusal[d] - after.refusal[d] for d in DOMAINS}, "drop in refusal rate"


def concept_section(
    base: ConceptVectors,
    after: ConceptVectors,
    drop: Mapping[str, float],
    target: str,
    out_dir: str | Path,
    layer_fraction: float = 1 / 3,
    layers: Sequence[int] | None = None,
    relative_to: str | Path | None = None,
) -> str:
    """Markdown on the concept vectors of one unlearning target; its PNGs are written to `out_dir`.

    `drop`: refusal drop per domain (baseline minus after unlearning). The similarity correlated with
    it is each non-target domain's baseline cosine similarity to the target, averaged over `layers`
    (default: `early_layers(L, layer_fraction)`). Image links are relative to `relative_to` (default
    `out_dir`, i.e. the Markdown lives next to the images).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    relative_to = Path(relative_to) if relative_to is not None else out_dir
    n_layers = base.vectors.shape[1]
    early = range(0, 0) if layers is not None else analysis.early_layers(n_layers, layer_fraction)
    selected = list(layers) if layers is not None else list(early)
    bad = [layer for layer in selected if not 0 <= layer < n_layers]
    if bad or not selected:
        raise ValueError(f"concept_section: layers {bad or selected} outside 0..{n_layers - 1}")
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
    early_similarity, drops, result = _early_correlation(similarity, selected, drop, target)
    scatter_file = plot_similarity_vs_drop(early_similarity, drops, DOMAINS, out_dir / f"{prefix}_similarity_vs_drop.png",
                                           f"Target {name}: similarity vs refusal drop")
    masked = similarity.clone()
    masked[DOMAINS.index(target)] = float("nan")
    per_layer = analysis.correlation_per_layer(masked, drops)
    per_layer_file = plot_correlation_per_layer(per_layer, out_dir / f"{prefix}_correlation_per_layer.png",
                                                early if layers is None else None, f"Target {name}: correlation per layer")

    contiguous = selected == list(range(selected[0], selected[-1] + 1))
    layer_text = f"layers {selected[0]}-{selected[-1]}" if contiguous else f"layers {selected}"
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
            lines.append(f"| {DISPLAY_NAMES[domain]} | {_number(float(early_similarity[i]))} | {_number(float(drops[i]))} |")
    lines += [
        "",
        "| Correlation | Coefficient | p-value | permutation p-value | n |",
        "|---|---|---|---|---|",
        f"| Spearman | {_number(result['spearman'][0])} | {_number(result['spearman'][1])} | "
        f"{_number(result.get('spearman_permutation_p', float('nan')))} | {result['n']} |",
        f"| Pearson | {_number(result['pearson'][0])} | {_number(result['pearson'][1])} | | {result['n']} |",
        "",
    ]
    if "note" in result:
        lines += [f"Note: {result['note']}.", ""]
    lines += [f"{link(scatter_file, 'similarity vs drop')} {link(per_layer_file, 'correlation per layer')}", ""]
    return "\n".join(lines)


def _number(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"
