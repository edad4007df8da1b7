"""Hand-built results for the report tests: rates given as fractions of 20 prompts per domain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

from ema_lightning.domains import DOMAINS
from ema_lightning.results import DomainRates, Evaluation, RunResult, Sample, StudyResult

Rates = Union[float, Mapping[str, float]]


def domain_rates(values: Rates, total: int = 20) -> DomainRates:
    """`values`: one rate for every domain, or {domain: rate} (domains left out get 1.0)."""
    per_domain = {d: values for d in DOMAINS} if isinstance(values, (int, float)) else {d: values.get(d, 1.0) for d in DOMAINS}
    return DomainRates({d: round(per_domain[d] * total) for d in DOMAINS}, dict.fromkeys(DOMAINS, total))


def evaluation(stage: str = "val", step: int = 10, refusal: Rates = 1.0, over_refusal: Rates = 0.0,
               external: Optional[Rates] = None, refusal_score: Optional[Mapping[str, float]] = None,
               ema_score: Optional[float] = None, samples: tuple[Sample, ...] = (),
               degenerate: Optional[Rates] = None, utility_nll: Optional[float] = None) -> Evaluation:
    """`degenerate` (a share of the harmful prompts) also sets `complied`: harmful prompts neither refused
    nor degenerate, counted on the same 20 prompts per domain (degenerate ones taken from the non-refused)."""
    refused = domain_rates(refusal)
    broken = None if degenerate is None else domain_rates(degenerate)
    complied = None if broken is None else DomainRates(
        {d: max(0, refused.total[d] - refused.refused[d] - broken.refused[d]) for d in DOMAINS}, refused.total)
    return Evaluation(stage, step, 0, refused, domain_rates(over_refusal), refusal_score,
                      None if external is None else domain_rates(external),
                      None if external is None else domain_rates(0.0), samples, ema_score,
                      degenerate=broken, complied=complied, utility_nll=utility_nll)


def run(name: str, target: Optional[str] = "privacy", method: str = "npo", contained: bool = False,
        evaluations: tuple[Evaluation, ...] = (), log_dir: str = "", wall_s: float = 0.0, concept_s: float = 0.0,
        seed: int = 0, group: str = "") -> RunResult:
    evaluations = evaluations or (evaluation("baseline", 0), evaluation("val", 10, refusal=0.0, ema_score=1.0))
    return RunResult(name, target, method, contained, seed, log_dir, evaluations, wall_s, concept_s, group)


def study(runs: tuple[RunResult, ...], base_evaluations: tuple[Evaluation, ...] = (), base_verdict: str = "",
          timings: Optional[Mapping[str, float]] = None) -> StudyResult:
    return StudyResult("demo", runs, base_evaluations, base_verdict, dict(timings or {}))
