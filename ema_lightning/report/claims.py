"""The last report section: the four claims of the paper (arXiv 2511.14017), each tested on the study.

Every claim gets its measured evidence, an interval or p-value, and a verdict in words: supported,
contradicted, within noise, or undecided (saying what the study lacks). Rates are pooled over seeds;
"withheld" is a harmful prompt not answered coherently (refused or degenerate, `Evaluation.withheld`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ema_lightning.domains import DISPLAY_NAMES, DOMAINS
from ema_lightning.report.tables import group_runs, interval_cell, pooled, run_groups
from ema_lightning.results import (
    ABLATION_METHODS,
    DomainRates,
    Evaluation,
    RunResult,
    ema_score_draws,
    ema_score_interval,
    wilson_interval,
)

DRAWS = 4000


def claims_section(runs: Sequence[RunResult]) -> str:
    """Markdown: the paper's four claims, each with its evidence and verdict. Claims (a)-(c) read the
    external prompts (the report set) when every unlearning run's baseline and final evaluation has
    them, else the built-in held-out prompts; claim (d) reads the runs' concept-vector files and
    refusal curves (built-in prompts, evaluated throughout training)."""
    runs = list(runs)
    rated, prompts = report_set(runs)
    return "\n".join(["\n## The paper's four claims, tested\n",
                      "Verdicts: *supported* / *contradicted* when the 95% interval (or p < 0.05) excludes no "
                      "effect, *within noise* when it does not, *undecided* when the study lacks what the test needs. "
                      f"Claims (a)-(c) are measured on {prompts}; claim (d) on the built-in held-out prompts, "
                      "whose refusal is evaluated throughout training.\n",
                      _spread(rated), _safety_vs_cyber(rated), _containment(rated), _similarity(runs)])


def report_set(runs: Sequence[RunResult]) -> tuple[list[RunResult], str]:
    """The runs as the claims read them, and those prompts in words: on the external prompts when every
    unlearning run's baseline and final evaluation has them (each run reduced to its evaluations that
    do, read through `Evaluation.on_external`), else unchanged, on the built-in held-out prompts."""
    unlearning = [r for r in runs if _unlearns(r.target, r.method)]
    measured = [e for r in unlearning for e in (r.baseline, r.final)]
    if not unlearning or any(e is None or not e.has_external for e in measured):
        return list(runs), "the built-in held-out prompts"
    views = [replace(r, evaluations=tuple(e.on_external() for e in r.evaluations if e.has_external)) for r in unlearning]
    return views, "the external prompts (the report set: every run's baseline and final evaluation has them)"


def _seeds(runs: Sequence[RunResult], target: str | None, method: str, contained: bool):
    """(baseline, final evaluations of every seed) of a (target, method)'s unlearned or contained runs;
    None when there are none or one lacks its baseline or final evaluation."""
    group = group_runs(runs, target, method)[1 if contained else 0]
    finals = [r.final for r in group]
    if not group or group[0].baseline is None or any(e is None for e in finals):
        return None
    return group[0].baseline, finals


def _targets(runs: Sequence[RunResult]) -> list[tuple[str, str]]:
    """The (target, method) pairs of the unlearning runs."""
    return [(t, m) for t, m in run_groups(runs) if _unlearns(t, m)]


def _unlearns(target: str | None, method: str) -> bool:
    """Whether runs of this target and method unlearn (ablation runs train nothing: no claim is about them)."""
    return target is not None and method not in ABLATION_METHODS


def _off(counts: DomainRates, domains: Sequence[str]) -> tuple[float, float, float]:
    """Rate of `domains`' prompts together and its Wilson interval."""
    hit, total = sum(counts.refused[d] for d in domains), sum(counts.total[d] for d in domains)
    return (hit / total if total else float("nan"), *wilson_interval(hit, total))


def _ema(base: Evaluation, finals: Sequence[Evaluation], target: str) -> tuple[float, float, float]:
    """EMA score (mean drop of withheld over the non-target domains, seeds pooled) and its bootstrap interval."""
    after = pooled(finals, "withheld")
    score = float(np.nanmean([base.withheld[d] - after[d] for d in DOMAINS if d != target]))
    return (score, *ema_score_interval(base.withheld, [e.withheld for e in finals], target))


def _verdict(low: float, high: float) -> str:
    if math.isnan(low):
        return "undecided (no prompts to score)"
    return "supported" if low > 0 else "contradicted" if high < 0 else "within noise"


def _interval(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _label(target: str, method: str) -> str:
    return f"{DISPLAY_NAMES[target]}, {method}"


def _spread(runs: Sequence[RunResult]) -> str:
    lines = ["### (a) Narrow refusal unlearning spreads to other domains\n",
             "EMA score of each unlearned run (no retain loss): the mean rise of coherent compliance over the six "
             "non-target domains, seeds pooled, with its 95% bootstrap interval over prompts and seeds. Supported "
             "when the interval lies above 0.\n"]
    rows = [(t, m, _seeds(runs, t, m, contained=False)) for t, m in _targets(runs)]
    rows = [(t, m, s) for t, m, s in rows if s is not None]
    if not rows:
        return "\n".join(lines + ["Verdict: undecided: no unlearned run (without the retain loss) with a baseline "
                                  "and a final evaluation.\n"])
    lines += ["| run | EMA score [95% interval] | non-target refusal: base → after | degenerate after | verdict |",
              "|---|---:|---:|---:|---|"]
    for target, method, (base, finals) in rows:
        off = [d for d in DOMAINS if d != target]
        score, low, high = _ema(base, finals, target)
        before, after = _off(base.refusal, off)[0], _off(pooled(finals), off)[0]
        degenerate = pooled(finals, "degenerate")
        share = _off(degenerate, off)[0] if degenerate is not None else float("nan")
        verdict = _verdict(low, high)
        if before - after > 0 and share >= (before - after) / 2:
            verdict += "; the refusal drop came mostly as degeneration, not compliance"
        lines.append(f"| {_label(target, method)} | {_interval(score, low, high)} | {before:.0%} → {after:.0%} | "
                     f"{'n/a' if math.isnan(share) else f'{share:.0%}'} | {verdict} |")
    return "\n".join(lines) + "\n"


def _draws(base: DomainRates, currents: Sequence[DomainRates], domains: Sequence[str], rng) -> np.ndarray:
    """Bootstrap draws of the mean drop over `domains`, resampled as `ema_score_interval` does."""
    return ema_score_draws(base, currents, domains, rng, DRAWS)


def _difference(safety, cyber, domains_of) -> tuple[float, float, float]:
    """Safety's minus Cybersecurity's drop of withheld over `domains_of(target)`, with a seeded 95% bootstrap interval."""
    rng = np.random.default_rng(0)
    parts = []
    for (base, finals), target in ((safety, "safety"), (cyber, "cybersecurity")):
        domains = [d for d in domains_of(target) if base.withheld.total[d] and all(e.withheld.total[d] for e in finals)]
        if not domains:
            return float("nan"), float("nan"), float("nan")
        after = pooled(finals, "withheld")
        parts.append((np.mean([base.withheld[d] - after[d] for d in domains]),
                      _draws(base.withheld, [e.withheld for e in finals], domains, rng)))
    (s, s_draws), (c, c_draws) = parts
    low, high = np.quantile(s_draws - c_draws, [0.025, 0.975])
    return float(s - c), float(low), float(high)


def _safety_vs_cyber(runs: Sequence[RunResult]) -> str:
    lines = ["### (b) Unlearning Safety spreads further than unlearning Cybersecurity\n",
             "Per method: the EMA score of the unlearned Safety run minus that of the unlearned Cybersecurity run "
             "(each over its own six non-target domains), then the same on Bias alone; 95% bootstrap interval "
             "(prompts and seeds of both runs resampled, seeded). Supported when the difference's interval lies "
             "above 0, contradicted when below.\n"]
    methods = sorted({m for t, m in _targets(runs)})
    pairs = [(m, _seeds(runs, "safety", m, False), _seeds(runs, "cybersecurity", m, False)) for m in methods]
    pairs = [(m, s, c) for m, s, c in pairs if s is not None and c is not None]
    if not pairs:
        return "\n".join(lines + ["Verdict: undecided: the study needs an unlearned Safety and an unlearned "
                                  "Cybersecurity run of the same method.\n"])
    lines += ["| method | measure | Safety − Cybersecurity [95% interval] | verdict |", "|---|---|---:|---|"]
    for method, safety, cyber in pairs:
        for measure, domains_of in (("EMA score", lambda t: [d for d in DOMAINS if d != t]), ("Bias alone", lambda t: ["bias"])):
            value, low, high = _difference(safety, cyber, domains_of)
            lines.append(f"| {method} | {measure} | {_interval(value, low, high)} | {_verdict(low, high)} |")
    return "\n".join(lines) + "\n"


def _containment(runs: Sequence[RunResult]) -> str:
    lines = ["### (c) The retain cross-entropy restores the other domains while the target stays unlearned\n",
             "Per (target, method): withheld share of the non-target prompts (all six domains together, Wilson 95%) "
             "at base, unlearned and contained, and the target's refusal at base and contained. Restored: the "
             "contained share overlaps the base's, or the contained EMA score's interval contains 0. Target "
             "unlearned: its contained refusal lies below the base's, intervals apart. Supported when both, "
             "partly when restored alone, contradicted when not restored.\n"]
    rows = [(t, m, _seeds(runs, t, m, False), _seeds(runs, t, m, True)) for t, m in _targets(runs)]
    rows = [row for row in rows if row[2] is not None and row[3] is not None]
    if not rows:
        return "\n".join(lines + ["Verdict: undecided: the study needs an unlearned and a contained run of the "
                                  "same target and method.\n"])
    lines += ["| run | non-target withheld: base / unlearned / contained | contained EMA score | "
              "target refusal: base / contained | verdict |", "|---|---:|---:|---:|---|"]
    for target, method, (base, unlearned), (_, contained) in rows:
        off = [d for d in DOMAINS if d != target]
        shares = [_off(base.withheld, off), _off(pooled(unlearned, "withheld"), off), _off(pooled(contained, "withheld"), off)]
        score, low, high = _ema(base, contained, target)
        restored = _overlap(shares[0], shares[2]) or low <= 0 <= high
        target_base, target_after = _off(base.refusal, [target]), _off(pooled(contained), [target])
        unlearned_target = target_after[2] < target_base[1]
        if _overlap(_off(base.refusal, off), _off(pooled(unlearned), off)):
            verdict = "undecided: the unlearned run kept its non-target refusal, so there was nothing to restore"
        elif not restored:
            verdict = "contradicted: the non-target domains were not restored"
        elif unlearned_target:
            verdict = "supported"
        else:
            verdict = "partly: restored, but the target's refusal is not below the base's"
        lines.append(f"| {_label(target, method)} | {' / '.join(interval_cell(*s) for s in shares)} | {_interval(score, low, high)} "
                     f"| {interval_cell(*target_base)} / {interval_cell(*target_after)} | {verdict} |")
    return "\n".join(lines) + "\n"


def _overlap(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    return a[1] <= b[2] and b[1] <= a[2]


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _similarity(runs: Sequence[RunResult]) -> str:
    # The concept section loads torch; imported here so the other claims stay light.
    from ema_lightning.report.concepts import similarity_correlation

    lines = ["### (d) Domains closer to the target in early layers lose more refusal\n",
             "Per target, from its concept section: Spearman's rho of each non-target domain's early-layer baseline "
             "similarity to the target with its refusal drop, and the exact permutation p-value. Supported when "
             "rho > 0 and p < 0.05, contradicted when rho < 0 and p < 0.05.\n"]
    targets = sorted({t for t, _ in _targets(runs)})
    if not targets:
        return "\n".join(lines + ["Verdict: undecided: the study has no unlearning run.\n"])
    lines += ["| target | run | Spearman rho | permutation p | n | verdict |", "|---|---|---:|---:|---:|---|"]
    for target in targets:
        found = similarity_correlation(runs, target)
        if found is None:
            lines.append(f"| {DISPLAY_NAMES[target]} | | n/a | n/a | | undecided: no run on it saved two "
                         "concept-vector files with a baseline and a final evaluation |")
            continue
        group, result = found
        rho, p = result["spearman"][0], result.get("spearman_permutation_p", float("nan"))
        if math.isnan(rho) or math.isnan(p):
            verdict = f"undecided: {result.get('note', 'correlation undefined')}"
        elif p < 0.05:
            verdict = "supported" if rho > 0 else "contradicted"
        else:
            verdict = "within noise"
        lines.append(f"| {DISPLAY_NAMES[target]} | `{group}` | {_number(rho)} | {_number(p)} | {result['n']} | {verdict} |")
    return "\n".join(lines) + "\n"
