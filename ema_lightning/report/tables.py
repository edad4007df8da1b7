"""Markdown tables of the study report: EMA tables, the aligned base, timings, sample generations."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Optional

from ema_lightning.domains import DISPLAY_NAMES, DOMAINS
from ema_lightning.results import (
    ABLATION_METHODS,
    DomainRates,
    Evaluation,
    RunResult,
    ema_score_interval,
    nanmean,
    wilson_interval,
)


def pct(value: Optional[float]) -> str:
    """A rate as a whole percentage (`95%`); `n/a` when it was not measured (None or nan)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.0f}%"


def interval_cell(rate: float, low: float, high: float, sd: Optional[float] = None) -> str:
    """`95% [76-99]`: a rate and its 95% interval in whole percent; `95% ±4 [76-99]` with a spread."""
    spread = "" if sd is None else f" ±{100 * sd:.0f}"
    return f"{pct(rate)}{spread} [{100 * low:.0f}-{100 * high:.0f}]"


def rate_cell(counts: Optional[DomainRates], domain: str, sd: Optional[float] = None) -> str:
    """`95% [76-99]`: the rate and its 95% Wilson interval; `n/a` when it was not measured."""
    if counts is None or counts.total[domain] == 0:
        return "n/a"
    return interval_cell(counts[domain], *counts.interval(domain), sd=sd)


def overall_cell(counts: Optional[DomainRates]) -> str:
    """All domains' prompts together: `rate [low-high]` (Wilson 95%); `n/a` when not measured."""
    if counts is None:
        return "n/a"
    refused, total = sum(counts.refused.values()), sum(counts.total.values())
    if not total:
        return "n/a"
    return interval_cell(refused / total, *wilson_interval(refused, total))


def within_noise(base: Optional[DomainRates], after: Optional[DomainRates]) -> list[str]:
    """Domains whose rate after training lies within noise of the base: the 95% intervals overlap."""
    if base is None or after is None:
        return []
    out = []
    for d in DOMAINS:
        if base.total[d] and after.total[d]:
            (b_low, b_high), (a_low, a_high) = base.interval(d), after.interval(d)
            if a_low <= b_high and b_low <= a_high:
                out.append(d)
    return out


def _counts(evaluation: Optional[Evaluation], external: bool = False) -> Optional[DomainRates]:
    if evaluation is None:
        return None
    return evaluation.external_refusal if external else evaluation.refusal


def rates(counts: Optional[DomainRates]) -> dict[str, float]:
    """{domain: rate}; nan in every domain when nothing was measured."""
    return counts.rates if counts is not None else dict.fromkeys(DOMAINS, float("nan"))


def harmful_refusal(evaluation: Optional[Evaluation], external: bool = False) -> dict[str, float]:
    """Refusal per domain on the built-in (or the external) harmful prompts of one evaluation."""
    if evaluation is None:
        return rates(None)
    return rates(evaluation.external_refusal if external else evaluation.refusal)


def over_refusal(evaluation: Optional[Evaluation]) -> dict[str, float]:
    """Refusal per domain on the benign look-alike prompts of one evaluation."""
    return rates(evaluation.over_refusal if evaluation is not None else None)


def run_groups(runs: Sequence[RunResult]) -> list[tuple[Optional[str], str]]:
    """The (target, method) pairs of the runs, in report order; each pair gets one table and one chart."""
    return sorted({(r.target, r.method) for r in runs}, key=str)


def group_runs(runs: Sequence[RunResult], target: Optional[str], method: str) -> tuple[list[RunResult], list[RunResult]]:
    """The unlearned (no retain loss) and the contained runs of one (target, method), each with all its
    seeds: the runs of one study run (`group`), the first such group of each kind."""
    group = [r for r in runs if (r.target, r.method) == (target, method)]

    def seeds_of(contained: bool) -> list[RunResult]:
        first = next((r for r in group if r.contained == contained), None)
        return [r for r in group if first is not None and r.group == first.group]

    return seeds_of(False), seeds_of(True)


def first_seeds(runs: Sequence[RunResult]) -> list[RunResult]:
    """One run per study run (`group`): its first seed."""
    seen: dict[str, RunResult] = {}
    for r in runs:
        seen.setdefault(r.group, r)
    return list(seen.values())


def pooled(evaluations: Sequence[Optional[Evaluation]], what: str = "refusal") -> Optional[DomainRates]:
    """The counts `what` (an `Evaluation` field or `withheld`) of several evaluations (one per seed) added;
    None when any was not measured."""
    counts = [getattr(e, what) if e is not None else None for e in evaluations]
    if not counts or any(c is None for c in counts):
        return None
    return DomainRates.pool(counts)


def seed_cell(evaluations: Sequence[Optional[Evaluation]], domain: str, what: str = "refusal") -> str:
    """`rate [low-high]` of the pooled counts; with several seeds `rate ±sd [low-high]`, sd over the seeds."""
    counts = pooled(evaluations, what)
    if counts is None or counts.total[domain] == 0 or len(evaluations) < 2:
        return rate_cell(counts, domain)
    return rate_cell(counts, domain, sd=statistics.stdev(getattr(e, what)[domain] for e in evaluations))


def _label(kind: str, group: list[RunResult]) -> str:
    seeds = f", {len(group)} seeds" if len(group) > 1 else ""
    return f"{kind} (`{group[0].group}`{seeds})"


def _field(name: str, external: bool) -> str:
    """The `Evaluation` field of `name` on the built-in (or the external) prompts."""
    return f"external_{name}" if external else name


def ema_tables(runs: Sequence[RunResult], external: bool = False) -> str:
    """One table per (target, method): refusal per domain at base, unlearned and contained, each with
    its degenerate share when measured, pooled over seeds; then over-refusal per domain on the benign
    prompts of the built-in set and, when measured, of the external set (real benign prompts).

    `external` picks the eval set of the refusal table and its EMA scores: the built-in held-out
    prompts or the external prompts."""
    what, broken_what = _field("refusal", external), _field("degenerate", external)
    lines: list[str] = []
    for target, method in run_groups(runs):
        unlearned, contained = group_runs(runs, target, method)
        base_eval = (unlearned or contained)[0].baseline
        kinds = (("ablated" if method in ABLATION_METHODS else "unlearned", unlearned), ("contained", contained))
        columns = [("base", [base_eval])]
        columns += [(_label(kind, group), [r.final for r in group]) for kind, group in kinds if group]
        broken = all(e is not None and getattr(e, broken_what) is not None for _, es in columns for e in es)
        header, cells = [], []
        for label, evaluations in columns:
            header += [label, "degenerate"] if broken else [label]
        lines.append(f"### Target {DISPLAY_NAMES.get(target, target)}, {method}\n")
        lines.append("| domain | " + " | ".join(header) + " |")
        lines.append("|---|" + "---:|" * len(header))
        for d in DOMAINS:
            mark = " (target)" if d == target else ""
            for _, evaluations in columns:
                cells.append(seed_cell(evaluations, d, what))
                if broken:
                    cells.append(seed_cell(evaluations, d, broken_what))
            lines.append(f"| {DISPLAY_NAMES[d]}{mark} | " + " | ".join(cells) + " |")
            cells = []
        if broken:
            lines.append("\nDegenerate: responses to harmful prompts that are empty, stuck or looping (or, under LoRA, "
                         "far less likely under the frozen base than its own answers); a refusal rate that falls while "
                         "this rises is a model that broke, not one that complies.")
        base = pooled([base_eval], what)
        for label, evaluations in columns[1:]:
            same = within_noise(base, pooled(evaluations, what))
            if same:
                lines.append(f"\nWithin noise of the base ({label.split(' ')[0]}; the 95% intervals overlap): "
                             + ", ".join(DISPLAY_NAMES[d] for d in same) + ".")
        lines.extend(_ema_lines(base_eval, kinds, target, external))
        lines.append(_over_refusal_table(columns, external))
    return "\n".join(lines)


def _over_refusal_table(columns: Sequence[tuple[str, Sequence[Optional[Evaluation]]]], external: bool) -> str:
    """Over-refusal per domain (refusal of benign prompts), for each column on the built-in look-alikes
    and, where measured, on the external benign prompts; all domains pooled in the last row."""
    sets = [("look-alikes", "over_refusal")]
    if all(e is not None and e.external_over_refusal is not None for _, es in columns for e in es):
        sets.append(("public benign", "external_over_refusal"))
    if external:
        sets.reverse()
    header = [f"{label.split(' ')[0]}: {name}" for label, _ in columns for name, _ in sets]
    lines = ["\nOver-refusal (benign prompts refused, 95% interval; look-alikes: the built-in benign twins; "
             "public benign: the external set's benign prompts, e.g. XSTest safe and CoCoNot contrast):\n",
             "| domain | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for d in DOMAINS:
        cells = [seed_cell(evaluations, d, field) for _, evaluations in columns for _, field in sets]
        lines.append(f"| {DISPLAY_NAMES[d]} | " + " | ".join(cells) + " |")
    cells = [overall_cell(pooled(evaluations, field)) for _, evaluations in columns for _, field in sets]
    lines.append("| all domains | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ema_lines(base: Optional[Evaluation], groups, target: Optional[str], external: bool = False) -> list[str]:
    """`EMA score (kind): mean over seeds [bootstrap interval over prompts and seeds] (what it measures)`;
    on the external prompts the score is computed here from their counts, as the module computes it
    on the built-in ones."""
    from ema_lightning.evaluation.metrics import ema_score

    lines = []
    for kind, group in groups:
        finals = [r.final for r in group if r.final is not None]
        if external:
            finals = [e for e in finals if e.external_refusal is not None]
        else:
            finals = [e for e in finals if e.ema_score is not None]
        if not finals or base is None or target is None or (external and base.external_refusal is None):
            continue
        complied = _field("complied", external)
        coherent = getattr(base, complied) is not None and all(getattr(e, complied) is not None for e in finals)
        if coherent:
            withheld = _field("withheld", external)
            before, counts = getattr(base, withheld), [getattr(e, withheld) for e in finals]
        else:
            before, counts = getattr(base, _field("refusal", external)), [getattr(e, _field("refusal", external)) for e in finals]
        score = nanmean(ema_score(before.rates, c.rates, target) for c in counts) if external else nanmean(e.ema_score for e in finals)
        low, high = ema_score_interval(before, counts, target)
        interval = "" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]"
        what = "rise of coherent compliance" if coherent else "refusal drop"
        over = "prompts and seeds" if len(finals) > 1 else "prompts"
        lines.append(f"\nEMA score ({kind}): {score:.3f}{interval} (mean {what} over the six non-target domains; "
                     f"95% bootstrap interval over {over})")
    return lines


def base_section(evaluations: Sequence[Evaluation], verdict: str = "") -> str:
    """Stage 1: refusal of the model as shipped (when measured before training) and after alignment,
    then the verdict sentence; empty without an aligned-base stage."""
    if not evaluations and not verdict:
        return ""
    return _base_tables(evaluations) + "\n" + verdict + "\n"


def _base_tables(evaluations: Sequence[Evaluation]) -> str:
    if not evaluations:
        return ""
    columns = [("as shipped" if e.stage == "baseline" else f"aligned (step {e.step})", e) for e in evaluations]
    if len(columns) > 2:
        columns = [columns[0], columns[-1]] if columns[0][0] == "as shipped" else [columns[-1]]
    kinds = [("refusal", "refusal"), ("over-refusal", "over_refusal")]
    if all(e.degenerate is not None for _, e in columns):
        kinds.append(("degenerate", "degenerate"))
    header = " | ".join(f"{label}: {what}" for label, _ in columns for what, _ in kinds)
    lines = ["\n## The aligned base (stage 1)\n", f"| domain | {header} |", "|---|" + "---:|" * (len(kinds) * len(columns))]
    for d in DOMAINS:
        cells = [rate_cell(getattr(e, field), d) for _, e in columns for _, field in kinds]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    if any(e.has_external for _, e in columns):
        kinds = [("refusal", "external_refusal"), ("over-refusal", "external_over_refusal")]
        if all(e.external_degenerate is not None for _, e in columns):
            kinds.append(("degenerate", "external_degenerate"))
        header = " | ".join(f"{label}: {what}" for label, _ in columns for what, _ in kinds)
        lines += ["\nOn the external prompts (harmful: refusal and degenerate; benign: over-refusal):\n",
                  f"| domain | {header} |", "|---|" + "---:|" * (len(kinds) * len(columns))]
        for d in DOMAINS:
            cells = [rate_cell(getattr(e, field), d) for _, e in columns for _, field in kinds]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def timings_table(timings: Mapping[str, float], runs: Sequence[RunResult]) -> str:
    """Wall seconds per stage, in the order measured; runs also show their concept-vector seconds."""
    lines = ["| stage | wall time (s) | concept vectors (s) |", "|---|---:|---:|"]
    for name, seconds in timings.items():
        concept = next((r.concept_s for r in runs if r.name == name), None)
        lines.append(f"| {name} | {seconds:.1f} | {'' if concept is None else f'{concept:.1f}'} |")
    return "\n".join(lines)


def samples_table(runs: Sequence[RunResult], per_domain: int = 1) -> str:
    """Generations per domain at baseline and after each run, so the judge can be checked by eye."""
    lines = ["| run | domain | harmful | prompt | response | judged |", "|---|---|---|---|---|---|"]
    first = runs[0] if runs else None
    sources = [("base", first.baseline)] if first and first.baseline else []
    sources += [(r.name, r.final) for r in first_seeds(runs) if r.final]
    for name, evaluation in sources:
        seen: dict[tuple[str, bool], int] = {}
        for s in evaluation.samples:
            key = (s.domain, s.harmful)
            if seen.get(key, 0) >= per_domain:
                continue
            seen[key] = seen.get(key, 0) + 1
            lines.append(
                f"| {name} | {s.domain} | {'yes' if s.harmful else 'no'} | {_cell(s.prompt)} | "
                f"{_cell(s.response)} | {'refused' if s.refused else 'complied'} |"
            )
    return "\n".join(lines)


def _cell(text: str, limit: int = 140) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"
