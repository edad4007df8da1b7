"""The method comparison: per unlearning run, what it did to the target domain, to the six others, to
benign prompts and to the model's utility, as one table (`methods_section`) and one scatter plot.

One row per study run (its target, forget method and containment), its seeds pooled: rates are the
pooled counts with their 95% Wilson interval (and the spread over seeds when there are several); the
EMA score is the mean over seeds with its bootstrap interval over prompts and seeds, as in the EMA
tables; the utility NLL is the mean over seeds with its change from the run's own baseline.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from ema_lightning.domains import DISPLAY_NAMES, DOMAINS
from ema_lightning.report.figures import plot_methods
from ema_lightning.report.tables import first_seeds, interval_cell, pooled
from ema_lightning.results import (
    DomainRates,
    Evaluation,
    RunResult,
    ema_score_interval,
    nanmean,
    wilson_interval,
)

EXPLANATION = (
    "Each unlearning run after training, its seeds pooled: refusal of the target's harmful prompts, refusal of "
    "the six other domains' harmful prompts together (the emergent misalignment, EMA), the EMA score (mean rise "
    "of coherent compliance over those six domains, 95% bootstrap interval), over-refusal (benign prompts of all "
    "domains refused), the degenerate share of responses to harmful prompts, and the utility NLL: the mean "
    "negative log-likelihood per token of held-out helpful answers to neutral prompts (lower is better), with "
    "its change from the run's baseline. Rates: pooled counts with 95% Wilson intervals, ± the standard "
    "deviation over seeds.\n")
HEADER = ("| target | method | retain | seeds | target refusal | off-target refusal (mean of 6) | EMA score | "
          "over-refusal | degenerate | utility NLL (change) |")


def methods_section(runs: Sequence[RunResult], figures: Path) -> str:
    """Markdown: the comparison table (a base row, then one row per run, for each target), the runs with
    fewer seeds than the others, and `figures/methods.png` (target against off-target refusal)."""
    groups = [r for r in first_seeds(runs) if r.target is not None]
    if not groups:
        return ""
    lines = ["\n## Method comparison\n", EXPLANATION, HEADER, "|---|---|---|---:|" + "---:|" * 6]
    for target in sorted({r.target for r in groups}):
        of_target = sorted((r for r in groups if r.target == target), key=lambda r: (r.method, r.contained, r.group))
        base = next((r.baseline for r in of_target if r.baseline is not None), None)
        if base is not None:
            lines.append(_row(target, "base", "", [base], None))
        for lead in of_target:
            seeds = [r for r in runs if r.group == lead.group]
            lines.append(_row(target, f"{lead.method} (`{lead.group}`)", "yes" if lead.contained else "no",
                              [r.final for r in seeds], [r.baseline for r in seeds]))
    lines.extend(_fewer_seeds(runs, groups))
    png = plot_methods([r for r in runs if r.target is not None], Path(figures) / "methods.png")
    lines.append(f"\n![method comparison](figures/{png.name})\n")
    return "\n".join(lines) + "\n"


def _row(target: str, method: str, retain: str, finals: Sequence[Evaluation | None],
         baselines: Sequence[Evaluation | None] | None) -> str:
    """One table row; `baselines` None: the base row (no EMA score, no change)."""
    measured = [e for e in finals if e is not None]
    off = [d for d in DOMAINS if d != target]
    cells = [DISPLAY_NAMES.get(target, target), method, retain, str(len(measured)) if baselines is not None else ""]
    cells.append(share_cell(measured, "refusal", [target]))
    cells.append(share_cell(measured, "refusal", off))
    cells.append(_ema_cell(measured, baselines, target))
    cells.append(share_cell(measured, "over_refusal", DOMAINS))
    cells.append(share_cell(measured, "degenerate", DOMAINS))
    cells.append(utility_cell(measured, baselines))
    return "| " + " | ".join(cells) + " |"


def share_cell(evaluations: Sequence[Evaluation], what: str, domains: Sequence[str]) -> str:
    """`rate ±sd [low-high]`: the share of `domains`' prompts counted in `what` (an `Evaluation` field),
    seeds pooled, its Wilson interval, and with several seeds the standard deviation over them."""
    counts = pooled(evaluations, what)
    if counts is None:
        return "n/a"
    hit, total = _sum(counts, domains)
    if not total:
        return "n/a"
    per_seed = [h / t for h, t in (_sum(getattr(e, what), domains) for e in evaluations) if t]
    sd = statistics.stdev(per_seed) if len(per_seed) > 1 else None
    return interval_cell(hit / total, *wilson_interval(hit, total), sd=sd)


def _sum(counts: DomainRates, domains: Sequence[str]) -> tuple[int, int]:
    return sum(counts.refused[d] for d in domains), sum(counts.total[d] for d in domains)


def _ema_cell(finals: Sequence[Evaluation], baselines: Sequence[Evaluation | None] | None, target: str) -> str:
    """The EMA score (mean over seeds) with its 95% bootstrap interval over prompts and seeds."""
    scored = [e for e in finals if e.ema_score is not None]
    base = next((b for b in baselines or () if b is not None), None)
    if not scored or base is None:
        return "-" if baselines is None else "n/a"
    coherent = base.complied is not None and all(e.complied is not None for e in scored)
    low, high = ema_score_interval(base.withheld if coherent else base.refusal,
                                   [e.withheld if coherent else e.refusal for e in scored], target)
    score = nanmean(e.ema_score for e in scored)
    return f"{score:.3f}" + ("" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]")


def utility_cell(finals: Sequence[Evaluation], baselines: Sequence[Evaluation | None] | None) -> str:
    """`2.31 (+0.45 ±0.05)`: the utility NLL (mean over seeds) and its change from each seed's baseline
    (mean, ± sd over seeds with several); the base row has no change. `n/a` when not measured."""
    values = [e.utility_nll for e in finals]
    if not values or any(v is None for v in values):
        return "n/a"
    cell = f"{statistics.fmean(values):.2f}"
    if baselines is None:
        return cell
    if len(baselines) != len(values) or any(b is None or b.utility_nll is None for b in baselines):
        return cell + " (n/a)"
    changes = [v - b.utility_nll for v, b in zip(values, baselines)]
    spread = f" ±{statistics.stdev(changes):.2f}" if len(changes) > 1 else ""
    return f"{cell} ({statistics.fmean(changes):+.2f}{spread})"


def _fewer_seeds(runs: Sequence[RunResult], groups: Sequence[RunResult]) -> list[str]:
    """A line naming the runs with fewer seeds than the study's most (their intervals cover fewer seeds)."""
    counts = {r.group: sum(1 for s in runs if s.group == r.group) for r in groups}
    most = max(counts.values())
    fewer = [f"`{g}` ({n} seed{'s' if n > 1 else ''})" for g, n in counts.items() if n < most]
    if not fewer:
        return []
    return [f"\nFewer seeds than the other runs ({most}): " + ", ".join(fewer)
            + "; their intervals cover fewer seeds, and with one seed there is no spread over seeds."]
