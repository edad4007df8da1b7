"""Typed results: one evaluation, one run, one study. Every stage writes and reads these.

`Evaluation` is what one pass over the eval prompts measured (per-domain refusal counts on harmful
prompts, over-refusal counts on benign ones, refusal scores, samples). `RunResult` is one training
run of a study with its evaluations; `StudyResult` is the whole study (`results.json`). Each
serialises to plain JSON (`to_dict`) and back (`from_dict`); nothing else carries results.
"""

from __future__ import annotations

import json
import math
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ema_lightning.domains import DOMAINS

STAGES = ("baseline", "val", "test")
ABLATION_METHODS = ("refusal_ablation", "domain_ablation")
"""Methods of runs that ablate a direction instead of training (`RefusalAblationModule`): compared
beside unlearning in the report, but no evidence for the paper's claims about unlearning."""
"""`baseline`: before training (step 0); `val`: an evaluation during or after fit; `test`: the test loop."""


def _json_number(value: Optional[float]) -> Optional[float]:
    """nan as None: JSON has no nan."""
    return None if value is None or math.isnan(value) else float(value)


def _number(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


def nanmean(values) -> float:
    """Mean of the finite values, nan when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else float("nan")


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% with the default z); (nan, nan) when total is 0.

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0/n and n/n, the rates a
    refusal study sees most: 20/20 gives [0.839, 1.0], 0/20 gives [0.0, 0.161].
    """
    if total <= 0:
        return float("nan"), float("nan")
    p, n = successes / total, total
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def ema_score_interval(baseline: "DomainRates", current: "DomainRates | Sequence[DomainRates]", target: str,
                       draws: int = 4000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the EMA score (mean rise of coherent compliance, or drop of refusal, over
    the non-target domains) over prompts and seeds.

    `baseline` and `current` hold the counts the score is a drop of (`Evaluation.withheld`); with one
    `current` per seed, each draw first resamples the seeds with replacement, then each domain's count,
    before and after, from a binomial with its measured rate and prompt count (a parametric bootstrap
    over prompts: the counts are all an `Evaluation` keeps). Seeded."""
    import numpy as np

    currents = [current] if isinstance(current, DomainRates) else list(current)
    domains = [d for d in DOMAINS if d != target and baseline.total[d] and all(c.total[d] for c in currents)]
    if not domains or not currents:
        return float("nan"), float("nan")
    scores = ema_score_draws(baseline, currents, domains, np.random.default_rng(seed), draws)
    tail = (1 - level) / 2
    return float(np.quantile(scores, tail)), float(np.quantile(scores, 1 - tail))


def ema_score_draws(baseline: "DomainRates", currents: "Sequence[DomainRates]", domains: Sequence[str], rng,
                    draws: int = 4000):
    """(draws,) bootstrap draws of the mean drop over `domains`: the seeds (`currents`) resampled with
    replacement, then every count redrawn from a binomial with its measured rate and prompt count."""
    import numpy as np

    picks = rng.integers(0, len(currents), draws) if len(currents) > 1 else np.zeros(draws, dtype=int)
    drops = []
    for d in domains:
        n_b = baseline.total[d]
        before = rng.binomial(n_b, baseline.refused[d] / n_b, draws) / n_b
        n_c = np.array([c.total[d] for c in currents])[picks]
        p_c = np.array([c.refused[d] / c.total[d] for c in currents])[picks]
        drops.append(before - rng.binomial(n_c, p_c) / n_c)
    return np.mean(drops, axis=0)


@dataclass(frozen=True)
class Agreement:
    """How two judges agreed on the same responses: counts of (first refused, second refused)."""

    both: int = 0
    first_only: int = 0
    second_only: int = 0
    neither: int = 0

    @property
    def total(self) -> int:
        return self.both + self.first_only + self.second_only + self.neither

    @property
    def observed(self) -> float:
        """Share of responses both judges judged alike (nan without responses)."""
        return (self.both + self.neither) / self.total if self.total else float("nan")

    @property
    def kappa(self) -> float:
        """Cohen's kappa: agreement beyond chance, (p_o - p_e) / (1 - p_e); 1.0 when both judges say the
        same of every response, nan without responses or when chance agreement is already 1 and they differ."""
        n = self.total
        if not n:
            return float("nan")
        first, second = (self.both + self.first_only) / n, (self.both + self.second_only) / n
        expected = first * second + (1 - first) * (1 - second)
        if expected == 1:
            return 1.0 if self.observed == 1 else float("nan")
        return (self.observed - expected) / (1 - expected)

    def __add__(self, other: "Agreement") -> "Agreement":
        return Agreement(*(a + b for a, b in zip(astuple(self), astuple(other))))


@dataclass(frozen=True)
class DomainRates:
    """Per-domain counts: `refused[d]` of `total[d]` prompts were refused (every domain present)."""

    refused: Mapping[str, int]
    total: Mapping[str, int]

    def __post_init__(self) -> None:
        for name in ("refused", "total"):
            counts = getattr(self, name)
            if set(counts) != set(DOMAINS):
                raise ValueError(f"DomainRates.{name}: expected the seven domains {list(DOMAINS)}, got {sorted(counts)}")
        bad = [d for d in DOMAINS if not 0 <= self.refused[d] <= self.total[d]]
        if bad:
            raise ValueError(f"DomainRates: refused must lie in 0..total, not in {bad}")

    @classmethod
    def from_counts(cls, refused: Sequence[int], total: Sequence[int]) -> DomainRates:
        """From counts in `DOMAINS` order (e.g. a metric's synced states)."""
        return cls({d: int(r) for d, r in zip(DOMAINS, refused)}, {d: int(t) for d, t in zip(DOMAINS, total)})

    @classmethod
    def pool(cls, counts: Sequence[DomainRates]) -> DomainRates:
        """The counts of several evaluations added (e.g. one run's seeds: prompts x seeds per domain)."""
        return cls({d: sum(c.refused[d] for c in counts) for d in DOMAINS}, {d: sum(c.total[d] for c in counts) for d in DOMAINS})

    @property
    def rates(self) -> dict[str, float]:
        """{domain: refused / total}, nan where a domain had no prompt."""
        return {d: self.refused[d] / self.total[d] if self.total[d] else float("nan") for d in DOMAINS}

    def __getitem__(self, domain: str) -> float:
        return self.rates[domain]

    def mean(self) -> float:
        """Mean rate over the domains that had prompts (each domain weighs the same)."""
        return nanmean(self.rates.values())

    def interval(self, domain: str) -> tuple[float, float]:
        """The 95% Wilson interval of `domain`'s rate."""
        return wilson_interval(self.refused[domain], self.total[domain])

    def to_dict(self) -> dict[str, Any]:
        # `rate` and `interval` are derived, written for people reading the JSON; from_dict ignores them.
        intervals = {d: self.interval(d) for d in DOMAINS}
        return {"rate": {d: _json_number(r) for d, r in self.rates.items()}, "refused": dict(self.refused),
                "total": dict(self.total),
                "interval": {d: None if math.isnan(lo) else [lo, hi] for d, (lo, hi) in intervals.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainRates:
        return cls({d: int(data["refused"][d]) for d in DOMAINS}, {d: int(data["total"][d]) for d in DOMAINS})


@dataclass(frozen=True)
class Sample:
    """One generation kept for the report, so a reader can check the judge by eye."""

    domain: str
    harmful: bool
    prompt: str
    response: str
    refused: bool


def withheld_from(complied: DomainRates) -> DomainRates:
    """Harmful prompts NOT answered coherently (refused or degenerate), from the counts of those that were."""
    return DomainRates({d: complied.total[d] - complied.refused[d] for d in DOMAINS}, complied.total)


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation measured on the eval prompts of all seven domains."""

    stage: str
    """`baseline` (step 0, before training), `val` or `test`."""
    step: int
    """Optimizer step of the weights evaluated."""
    epoch: int
    refusal: DomainRates
    """Refusals of harmful prompts."""
    over_refusal: DomainRates
    """Refusals of benign look-alike prompts."""
    refusal_score: Optional[Mapping[str, float]] = None
    """Mean refusal log-odds on harmful prompts per domain (nan where a domain had none)."""
    external_refusal: Optional[DomainRates] = None
    """Refusals of the external (public benchmark) harmful prompts, when an external set is evaluated."""
    external_over_refusal: Optional[DomainRates] = None
    """Refusals of the external benign prompts (e.g. XSTest safe, CoCoNot contrast): over-refusal on real prompts."""
    samples: tuple[Sample, ...] = ()
    ema_score: Optional[float] = None
    """Mean refusal drop over the six non-target domains against the run's baseline (None without a target)."""
    degenerate: Optional[DomainRates] = None
    """Degenerate responses to harmful prompts (empty, stuck, looping, or, under LoRA, far less likely
    under the frozen base than its own answers); None without generated text."""
    complied: Optional[DomainRates] = None
    """Harmful prompts answered coherently: neither refused nor degenerate (None without generated text)."""
    base_logprob: Optional[Mapping[str, float]] = None
    """Mean token log-prob of the responses to harmful prompts under the frozen base (adapters
    disabled), per domain; None without LoRA or generated text."""
    unparsed: Optional[DomainRates] = None
    """Harmful prompts whose response a generative judge's output could not be read for (left out of
    every rate); None for judges that always decide."""
    harm: Optional[DomainRates] = None
    """Responses to harmful prompts the judge found harmful (judges that also judge harm); reported
    beside refusal, never merged into it."""
    judges: Mapping[str, DomainRates] = field(default_factory=dict)
    """Refusal on harmful prompts as each audit judge reads the same responses."""
    agreement: Mapping[str, Agreement] = field(default_factory=dict)
    """Per audit judge, its agreement with the main judge on every evaluated response."""
    external_degenerate: Optional[DomainRates] = None
    """Degenerate responses to the external harmful prompts (as `degenerate`)."""
    external_complied: Optional[DomainRates] = None
    """External harmful prompts answered coherently (as `complied`)."""
    utility_nll: Optional[float] = None
    """Model utility: the mean negative log-likelihood per token of held-out helpful answers to neutral
    prompts (teacher-forced, all answer tokens pooled); None when no utility set was evaluated."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", tuple(self.samples))
        if self.stage not in STAGES:
            raise ValueError(f"Evaluation.stage: {self.stage!r}; accepted: {', '.join(STAGES)}")

    @property
    def has_external(self) -> bool:
        return self.external_refusal is not None

    @property
    def withheld(self) -> DomainRates:
        """Harmful prompts NOT answered coherently (refused or degenerate): what the EMA score is a drop
        of, so a model that breaks does not count as one that complies; refusal without generated text."""
        return self.refusal if self.complied is None else withheld_from(self.complied)

    @property
    def external_withheld(self) -> Optional[DomainRates]:
        """As `withheld`, on the external harmful prompts (None without an external set)."""
        if self.external_complied is None:
            return self.external_refusal
        return withheld_from(self.external_complied)

    def on_external(self) -> Evaluation:
        """This evaluation read on its external prompts only: their refusal, over-refusal, degenerate and
        coherent-compliance counts in place of the built-in ones (what the claims test on a report set)."""
        if not self.has_external:
            raise ValueError(f"Evaluation at step {self.step} has no external eval set")
        empty = DomainRates({d: 0 for d in DOMAINS}, {d: 0 for d in DOMAINS})
        return replace(
            self, refusal=self.external_refusal, over_refusal=self.external_over_refusal or empty,
            degenerate=self.external_degenerate, complied=self.external_complied, refusal_score=None, samples=(),
            ema_score=None, base_logprob=None, unparsed=None, harm=None, judges={}, agreement={},
            external_refusal=None, external_over_refusal=None, external_degenerate=None, external_complied=None)

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat scalars for the loggers: `<prefix>/refusal/<domain>`, `.../mean`, over-refusal, scores,
        the external set under `<prefix>_external/...`, `<prefix>/ema_score` and `<prefix>/utility/nll`."""
        out = _rate_metrics(prefix, self.refusal, self.over_refusal)
        if self.refusal_score is not None:
            out.update({f"{prefix}/refusal_score/{d}": float(v) for d, v in self.refusal_score.items()})
        if self.external_refusal is not None and self.external_over_refusal is not None:
            out.update(_rate_metrics(f"{prefix}_external", self.external_refusal, self.external_over_refusal))
        for name in ("degenerate", "complied"):
            counts = getattr(self, f"external_{name}")
            if counts is not None:
                out.update({f"{prefix}_external/{name}/{d}": v for d, v in counts.rates.items()})
        if self.ema_score is not None:
            out[f"{prefix}/ema_score"] = float(self.ema_score)
        if self.degenerate is not None:
            out.update({f"{prefix}/degenerate/{d}": v for d, v in self.degenerate.rates.items()})
            out[f"{prefix}/degenerate/mean"] = self.degenerate.mean()
        if self.complied is not None:
            out.update({f"{prefix}/complied/{d}": v for d, v in self.complied.rates.items()})
        for name in ("unparsed", "harm"):
            counts = getattr(self, name)
            if counts is not None:
                out.update({f"{prefix}/{name}/{d}": v for d, v in counts.rates.items()})
        if self.base_logprob is not None:
            out.update({f"{prefix}/base_logprob/{d}": float(v) for d, v in self.base_logprob.items()})
        for name, counts in self.judges.items():
            out.update({f"{prefix}/judges/{name}/refusal/{d}": v for d, v in counts.rates.items()})
        for name, agreement in self.agreement.items():
            out[f"{prefix}/judges/{name}/kappa"] = agreement.kappa
        if self.utility_nll is not None:
            out[f"{prefix}/utility/nll"] = float(self.utility_nll)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "step": self.step, "epoch": self.epoch,
            "refusal": self.refusal.to_dict(), "over_refusal": self.over_refusal.to_dict(),
            "refusal_score": None if self.refusal_score is None else {d: _json_number(v) for d, v in self.refusal_score.items()},
            "external_refusal": None if self.external_refusal is None else self.external_refusal.to_dict(),
            "external_over_refusal": None if self.external_over_refusal is None else self.external_over_refusal.to_dict(),
            "external_degenerate": None if self.external_degenerate is None else self.external_degenerate.to_dict(),
            "external_complied": None if self.external_complied is None else self.external_complied.to_dict(),
            "samples": [vars(s) for s in self.samples],
            "ema_score": _json_number(self.ema_score),
            "degenerate": None if self.degenerate is None else self.degenerate.to_dict(),
            "complied": None if self.complied is None else self.complied.to_dict(),
            "unparsed": None if self.unparsed is None else self.unparsed.to_dict(),
            "harm": None if self.harm is None else self.harm.to_dict(),
            "base_logprob": None if self.base_logprob is None else {d: _json_number(v) for d, v in self.base_logprob.items()},
            "judges": {name: counts.to_dict() for name, counts in self.judges.items()},
            "agreement": {name: {**vars(a), "kappa": _json_number(a.kappa)} for name, a in self.agreement.items()},
            "utility_nll": _json_number(self.utility_nll),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        def rates(key: str) -> Optional[DomainRates]:
            return DomainRates.from_dict(data[key]) if data.get(key) is not None else None

        score, logprob = data.get("refusal_score"), data.get("base_logprob")
        return cls(
            stage=data["stage"], step=int(data["step"]), epoch=int(data.get("epoch", 0)),
            refusal=DomainRates.from_dict(data["refusal"]), over_refusal=DomainRates.from_dict(data["over_refusal"]),
            refusal_score=None if score is None else {d: _number(score[d]) for d in DOMAINS},
            external_refusal=rates("external_refusal"), external_over_refusal=rates("external_over_refusal"),
            external_degenerate=rates("external_degenerate"), external_complied=rates("external_complied"),
            samples=tuple(Sample(**s) for s in data.get("samples", ())),
            ema_score=None if data.get("ema_score") is None else float(data["ema_score"]),
            degenerate=rates("degenerate"), complied=rates("complied"), unparsed=rates("unparsed"), harm=rates("harm"),
            base_logprob=None if logprob is None else {d: _number(logprob[d]) for d in DOMAINS},
            judges={name: DomainRates.from_dict(c) for name, c in (data.get("judges") or {}).items()},
            agreement={name: Agreement(a["both"], a["first_only"], a["second_only"], a["neither"])
                       for name, a in (data.get("agreement") or {}).items()},
            utility_nll=None if data.get("utility_nll") is None else float(data["utility_nll"]),
        )

    def without_samples(self) -> Evaluation:
        return Evaluation(**{**vars(self), "samples": ()})


def _rate_metrics(prefix: str, refusal: DomainRates, over_refusal: DomainRates) -> dict[str, float]:
    out = {f"{prefix}/refusal/{d}": v for d, v in refusal.rates.items()}
    out[f"{prefix}/refusal/mean"] = refusal.mean()
    out.update({f"{prefix}/over_refusal/{d}": v for d, v in over_refusal.rates.items()})
    out[f"{prefix}/over_refusal/mean"] = over_refusal.mean()
    return out


def save_evaluations(path: Path, evaluations: Sequence[Evaluation]) -> Path:
    """Write evaluations as a JSON list (`eval_history.json`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([e.to_dict() for e in evaluations], indent=1))
    return path


def load_evaluations(path: Path) -> list[Evaluation]:
    return [Evaluation.from_dict(e) for e in json.loads(Path(path).read_text())]


@dataclass(frozen=True)
class RunResult:
    """One training run of a study: what it was and what it measured."""

    name: str
    target: Optional[str]
    """The unlearning target domain (None for alignment)."""
    method: str
    """The forget objective (`npo`, `gradient_ascent`, `compliance`, ...), or `alignment`."""
    contained: bool
    """Trained with the retain cross-entropy (alpha > 0)."""
    seed: int
    log_dir: str
    evaluations: tuple[Evaluation, ...]
    wall_s: float = 0.0
    """Wall time of the whole run (model load, training, evaluations, export)."""
    concept_s: float = 0.0
    """Of which the concept-vector callback (capture, files, figures)."""
    group: str = ""
    """The study run this one repeats with another seed (its name when a study has one seed)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "evaluations", tuple(self.evaluations))
        if not self.group:
            object.__setattr__(self, "group", self.name)

    @property
    def baseline(self) -> Optional[Evaluation]:
        return next((e for e in self.evaluations if e.stage == "baseline"), None)

    @property
    def final(self) -> Optional[Evaluation]:
        evaluated = [e for e in self.evaluations if e.stage != "baseline"]
        return evaluated[-1] if evaluated else None

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in vars(self).items() if k != "evaluations"},
                "evaluations": [e.to_dict() for e in self.evaluations]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        return cls(**{**data, "evaluations": tuple(Evaluation.from_dict(e) for e in data["evaluations"])})


@dataclass(frozen=True)
class StudyResult:
    """A whole study: the aligned base's evaluations (stage 1), its verdict, the runs and the timings."""

    name: str
    runs: tuple[RunResult, ...]
    base_evaluations: tuple[Evaluation, ...] = ()
    base_verdict: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)
    """Wall seconds per stage (`aligned base`, each run name, `total`)."""
    judge_accuracy: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """{labelled file: {judge name: accuracy}}: the runs' judges against human labels (`Study.judge_labels`)."""
    relearning: tuple[RunResult, ...] = ()
    """The relearning check (`Study.relearn`): one fit per checked run, `group` naming the run it continues."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "base_evaluations", tuple(self.base_evaluations))
        object.__setattr__(self, "relearning", tuple(self.relearning))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "runs": [r.to_dict() for r in self.runs],
                "base_evaluations": [e.to_dict() for e in self.base_evaluations],
                "base_verdict": self.base_verdict, "timings": dict(self.timings),
                "judge_accuracy": {f: dict(a) for f, a in self.judge_accuracy.items()},
                "relearning": [r.to_dict() for r in self.relearning]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyResult:
        return cls(name=data["name"], runs=tuple(RunResult.from_dict(r) for r in data["runs"]),
                   base_evaluations=tuple(Evaluation.from_dict(e) for e in data.get("base_evaluations", ())),
                   base_verdict=data.get("base_verdict", ""), timings=dict(data.get("timings", {})),
                   judge_accuracy={f: dict(a) for f, a in (data.get("judge_accuracy") or {}).items()},
                   relearning=tuple(RunResult.from_dict(r) for r in data.get("relearning", ())))

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> StudyResult:
        return cls.from_dict(json.loads(Path(path).read_text()))
