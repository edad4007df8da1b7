"""How susceptible each domain is, read from its refusal curve over training.

The graded EMA the paper is about is an order: some domains lose their refusals sooner than others.
Two measures per domain, from a run's evaluations (baseline at step 0, then the validations):

- the half-refusal step: the first step at which refusal falls to half its baseline, linearly
  interpolated between the two evaluations around the crossing (None when it never does);
- the refusal area: the area under the refusal curve relative to keeping the baseline for the whole
  run (1 = refusal kept, 0 = lost at once); its complement is the share of refusal lost over training.

`susceptibility` (1 - area, mean over a run's seeds) is what the concept analysis correlates with.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from ema_lightning.domains import DOMAINS
from ema_lightning.results import RunResult, nanmean


def refusal_curve(run: RunResult, domain: str, scores: bool = False) -> list[tuple[int, float]]:
    """(step, refusal rate) of the baseline and every validation, in step order (test evaluations left
    out); with `scores`, the mean refusal log-odds instead (where the evaluations logged them)."""
    points = {e.step: (e.refusal_score[domain] if e.refusal_score is not None else float("nan")) if scores
              else e.refusal[domain] for e in run.evaluations if e.stage in ("baseline", "val")}
    return sorted((s, r) for s, r in points.items() if not math.isnan(r))


def half_refusal_step(curve: Sequence[tuple[int, float]]) -> Optional[float]:
    """The step at which refusal first reaches half its step-0 value (interpolated); None if it never
    does, or without a positive baseline."""
    if len(curve) < 2 or curve[0][0] != 0 or curve[0][1] <= 0:
        return None
    half = curve[0][1] / 2
    for (s0, r0), (s1, r1) in zip(curve, curve[1:]):
        if r1 <= half:
            return s1 if r0 == r1 else s0 + (r0 - half) / (r0 - r1) * (s1 - s0)
    return None


def refusal_area(curve: Sequence[tuple[int, float]]) -> float:
    """Trapezoid area under refusal / baseline over the run's steps, divided by the last step: 1 when
    refusal stays at its baseline, 0 when it is lost at step 0+; nan without a positive baseline."""
    if len(curve) < 2 or curve[0][0] != 0 or curve[0][1] <= 0 or curve[-1][0] <= 0:
        return float("nan")
    base = curve[0][1]
    area = sum((s1 - s0) * (r0 + r1) / 2 for (s0, r0), (s1, r1) in zip(curve, curve[1:]))
    return area / (base * curve[-1][0])


def susceptibility(runs: Sequence[RunResult], scores: bool = False) -> dict[str, float]:
    """Per domain, 1 - refusal area, averaged over `runs` (the seeds of one run); with `scores`, of the
    refusal log-odds curve (relative to its positive baseline; it orders domains whose refusal rates
    fell together, as the log-odds keep moving where the rates sit at 0 or 1)."""
    return {d: 1 - nanmean(refusal_area(refusal_curve(r, d, scores)) for r in runs) for d in DOMAINS}


def half_refusal_steps(runs: Sequence[RunResult]) -> dict[str, tuple[float, int]]:
    """Per domain, (mean half-refusal step over the seeds that crossed, how many seeds crossed)."""
    out = {}
    for d in DOMAINS:
        steps = [s for s in (half_refusal_step(refusal_curve(r, d)) for r in runs) if s is not None]
        out[d] = (sum(steps) / len(steps) if steps else float("nan"), len(steps))
    return out
