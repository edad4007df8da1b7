"""The report's trust sections: the judge audit and the susceptibility of each domain over training."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional

from ema_lightning.domains import DISPLAY_NAMES, DOMAINS
from ema_lightning.report.tables import first_seeds, overall_cell, pct
from ema_lightning.results import Agreement, DomainRates, RunResult


def audit_section(runs: Sequence[RunResult], judge_accuracy: Mapping[str, Mapping[str, float]]) -> str:
    """The judge audit: per run (its seeds and every evaluation pooled), the main judge's agreement
    with each audit judge on the run's own generations, their refusal rates side by side, the
    degenerate and unparsed shares; then each judge's accuracy on the labelled sets given."""
    names = sorted({n for r in runs for e in r.evaluations for n in e.agreement})
    lines = ["\n## Judge audit\n",
             "How far the refusal numbers can be trusted. Cohen's kappa of the main judge against each audit "
             "judge on the same responses (every response of every evaluation of the run's seeds; 1 = the same "
             "verdict everywhere, 0 = agreement by chance); refusal on harmful prompts by each judge (final "
             "evaluations, all domains together, with 95% intervals); the share of degenerate responses and of responses a generative "
             "judge's output could not be read for.\n"]
    if names:
        header = ["run", "responses"] + [f"kappa vs {n}" for n in names] + ["refusal: main"] + [n for n in names]
        header += ["degenerate", "unparsed"]
        lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for lead in first_seeds(runs):
            seeds = [r for r in runs if r.group == lead.group]
            evaluations = [e for r in seeds for e in r.evaluations if e.stage != "baseline"]
            agreements = {n: sum((e.agreement[n] for e in evaluations if n in e.agreement), Agreement()) for n in names}
            finals = [r.final for r in seeds if r.final is not None]
            total = max((a.total for a in agreements.values()), default=0)
            cells = [f"`{lead.group}`", str(total)] + [_kappa(agreements[n]) for n in names]
            cells.append(_pooled_cell([e.refusal for e in finals]))
            cells += [_pooled_cell([e.judges.get(n) for e in finals]) for n in names]
            cells += [_pooled_cell([e.degenerate for e in finals]), _pooled_cell([e.unparsed for e in finals])]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("No audit judge was configured (`model.init_args.audit_judges`).")
    if judge_accuracy:
        judges = sorted({j for accuracy in judge_accuracy.values() for j in accuracy}, key=lambda j: (j != "main", j))
        lines += ["\nAccuracy against human labels (`judge_labels`):\n",
                  "| labelled set | " + " | ".join(judges) + " |", "|---|" + "---:|" * len(judges)]
        for path, accuracy in judge_accuracy.items():
            lines.append(f"| `{path}` | " + " | ".join(f"{accuracy[j]:.3f}" if j in accuracy else "n/a" for j in judges) + " |")
    return "\n".join(lines) + "\n"


def _pooled_cell(counts: Sequence[Optional[DomainRates]]) -> str:
    """`overall_cell` of several evaluations' counts added; `n/a` when any was not measured."""
    if not counts or any(c is None for c in counts):
        return "n/a"
    return overall_cell(DomainRates.pool(counts))


def susceptibility_section(runs: Sequence[RunResult]) -> str:
    """Per unlearning run without the retain loss (seeds pooled): each domain's half-refusal step and the
    share of its refusal lost over training (1 - area under its refusal curve), the order of the graded EMA."""
    from ema_lightning.susceptibility import half_refusal_steps, susceptibility

    groups = [[r for r in runs if r.group == lead.group] for lead in first_seeds(runs) if not lead.contained]
    groups = [g for g in groups if g[0].target is not None and sum(e.stage == "val" for e in g[0].evaluations) >= 2]
    if not groups:
        return ""
    header = " | ".join(f"`{g[0].group}`" for g in groups)
    lines = ["\n## Susceptibility over training\n",
             "Per domain: the step at which refusal on held-out harmful prompts first fell to half its baseline "
             "(interpolated between evaluations; mean over the seeds that got there, their count in brackets; "
             "`>N`: never within the run's N steps), then the share of refusal lost over training (1 - the area "
             "under the refusal curve relative to the baseline kept throughout). Lower steps and higher shares: "
             "more susceptible.\n", f"| domain | {header} |", "|---|" + "---:|" * len(groups)]
    steps = [half_refusal_steps(g) for g in groups]
    lost = [susceptibility(g) for g in groups]
    for d in DOMAINS:
        cells = []
        for g, half, share in zip(groups, steps, lost):
            mean, crossed = half[d]
            last = max(e.step for e in g[0].evaluations)
            step = f">{last}" if not crossed else f"{mean:.1f} ({crossed}/{len(g)})"
            cells.append(f"{step} · {pct(share[d])} lost")
        mark = " (target)" if all(g[0].target == d for g in groups) else ""
        lines.append(f"| {DISPLAY_NAMES[d]}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _kappa(agreement: Agreement) -> str:
    kappa = agreement.kappa
    return "n/a" if math.isnan(kappa) else f"{kappa:.2f}"
