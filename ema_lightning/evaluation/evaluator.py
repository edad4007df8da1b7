"""The Evaluator: eval batches -> generation (or one logit forward) -> judge -> metrics -> an `Evaluation`.

It owns everything refusal measurement needs (judges, greedy generation, refusal scores, the
per-domain metrics of each stage, the samples kept for the report), so a LightningModule only calls
`update` from its eval steps and `compute` at the end of the epoch. It is an `nn.Module` so that its
metrics follow the model's device.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ema_lightning.domains import DOMAINS
from ema_lightning.evaluation.coherence import DegenerateDetector
from ema_lightning.evaluation.generation import generate
from ema_lightning.evaluation.judges import KeywordRefusalJudge, LogitRefusalJudge, RefusalJudge
from ema_lightning.evaluation.metrics import DomainMean
from ema_lightning.results import DomainRates, Evaluation, Sample


class StageMetrics(torch.nn.Module):
    """The metrics of one stage (`val` or `test`): its own objects, so stages never share state."""

    def __init__(self, refusal_score: bool) -> None:
        super().__init__()
        self.refusal = DomainMean()
        self.over_refusal = DomainMean()
        self.refusal_score = DomainMean() if refusal_score else None
        self.external_refusal = DomainMean()
        self.external_over_refusal = DomainMean()
        self.degenerate = DomainMean()
        self.samples: list[Sample] = []


class Evaluator(torch.nn.Module):
    """Refusal per domain of a model on eval batches (as `EvalCollator` makes them).

    Args:
        judge: refusal judge over generated responses (default: `KeywordRefusalJudge`).
        logit_judge: when set, refusal is judged from first-token log-odds (one forward, no generation).
        max_new_tokens: greedy tokens generated per prompt.
        samples_per_domain: generations kept per domain and harmful/benign for the report.
        refusal_score: also measure each domain's mean refusal log-odds on harmful prompts, read from
            generation's prefill logits (no extra forward); with a `logit_judge`, its openers define it.
        degenerate: the detector of broken responses (default `DegenerateDetector`); the share of
            degenerate responses to harmful prompts is measured per domain beside refusal.
    """

    def __init__(
        self,
        judge: Optional[RefusalJudge] = None,
        logit_judge: Optional[LogitRefusalJudge] = None,
        max_new_tokens: int = 24,
        samples_per_domain: int = 2,
        refusal_score: bool = True,
        degenerate: Optional[DegenerateDetector] = None,
    ) -> None:
        super().__init__()
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if samples_per_domain < 0:
            raise ValueError(f"samples_per_domain must be >= 0, got {samples_per_domain}")
        self.judge = judge if judge is not None else KeywordRefusalJudge()
        self.logit_judge = logit_judge
        self.score_judge = (logit_judge or LogitRefusalJudge()) if refusal_score else None
        self.degenerate = degenerate if degenerate is not None else DegenerateDetector()
        self.max_new_tokens = max_new_tokens
        self.samples_per_domain = samples_per_domain
        self.stages = torch.nn.ModuleDict({stage: StageMetrics(refusal_score) for stage in ("val", "test")})

    def settings(self) -> dict[str, Any]:
        """What the measurement depends on besides model and prompts (for baseline cache keys)."""
        return {"judge": _spec(self.judge), "logit_judge": _spec(self.logit_judge), "score_judge": _spec(self.score_judge),
                "degenerate": _spec(self.degenerate), "max_new_tokens": self.max_new_tokens,
                "samples_per_domain": self.samples_per_domain}

    # ------------------------------------------------------------------ one batch
    def update(self, stage: str, model, tokenizer, batch: dict[str, Any], external: bool = False) -> None:
        """Judge one eval batch and add it to `stage`'s metrics (`external`: the second eval set)."""
        metrics = self.stages[stage]
        want_scores = metrics.refusal_score is not None and not external
        refused, responses, scores = self._judge(model, tokenizer, batch, want_scores)
        valid = batch.get("valid")
        valid = torch.ones_like(refused) if valid is None else valid.to(refused.device).bool()
        harmful = batch["harmful"].to(refused.device).bool()
        domain_ids = batch["domain_ids"]
        refusal, over_refusal = ((metrics.external_refusal, metrics.external_over_refusal) if external
                                 else (metrics.refusal, metrics.over_refusal))
        refusal.update(refused, domain_ids, valid & harmful)
        over_refusal.update(refused, domain_ids, valid & ~harmful)
        if scores is not None:
            metrics.refusal_score.update(scores.float(), domain_ids, valid & harmful)
        if responses is not None and not external:
            broken = torch.tensor(self.degenerate(responses), dtype=torch.bool, device=refused.device)
            metrics.degenerate.update(broken, domain_ids, valid & harmful)
            self._keep_samples(metrics.samples, batch, responses, refused, valid)

    def _judge(self, model, tokenizer, batch, scores: bool) -> tuple[torch.Tensor, Optional[list[str]], Optional[torch.Tensor]]:
        """Refused flags, the responses (None under the logit judge) and, with `scores`, the refusal
        log-odds, all from one forward pass (the logit judge's, or generation's prefill)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.logit_judge is not None:
            judge = self._prepared(self.logit_judge, tokenizer)
            logits = judge.last_logits(model, ids, mask)
            refused, responses = judge.log_odds(logits) > judge.threshold, None
        else:
            sink: Optional[list[torch.Tensor]] = [] if scores else None
            responses = generate(model, tokenizer, ids, mask, max_new_tokens=self.max_new_tokens, first_logits=sink)
            refused = torch.tensor(self.judge(responses, batch["prompts"]), dtype=torch.bool)
            logits = sink[0] if sink else None
        log_odds = self._prepared(self.score_judge, tokenizer).log_odds(logits) if scores and logits is not None else None
        return refused.to(ids.device).bool(), responses, log_odds

    @staticmethod
    def _prepared(judge: LogitRefusalJudge, tokenizer) -> LogitRefusalJudge:
        """The judge with its first-token ids read from the tokenizer once, not at every batch."""
        if judge.refusal_ids is None:
            judge.prepare(tokenizer)
        return judge

    def _keep_samples(self, samples: list[Sample], batch, responses, refused, valid) -> None:
        for i, response in enumerate(responses):
            if not bool(valid[i]):
                continue
            domain, harmful = DOMAINS[int(batch["domain_ids"][i])], bool(batch["harmful"][i])
            if sum(1 for s in samples if s.domain == domain and s.harmful == harmful) < self.samples_per_domain:
                samples.append(Sample(domain, harmful, batch["prompts"][i], response, bool(refused[i])))

    # ------------------------------------------------------------------ one epoch
    def compute(self, stage: str, label: str, step: int, epoch: int) -> Evaluation:
        """The `Evaluation` of everything `stage` saw since the last compute (synced across processes;
        collective: every rank calls it); the metrics are then reset. `label` is the Evaluation's stage."""
        metrics = self.stages[stage]
        external = metrics.external_refusal.update_called
        generated = metrics.degenerate.update_called  # not under the logit judge: no text to read
        evaluation = Evaluation(
            stage=label, step=step, epoch=epoch,
            refusal=_rates(metrics.refusal), over_refusal=_rates(metrics.over_refusal),
            refusal_score=_means(metrics.refusal_score) if metrics.refusal_score is not None else None,
            external_refusal=_rates(metrics.external_refusal) if external else None,
            external_over_refusal=_rates(metrics.external_over_refusal) if external else None,
            samples=tuple(metrics.samples),
            degenerate=_rates(metrics.degenerate) if generated else None,
        )
        for metric in (metrics.refusal, metrics.over_refusal, metrics.refusal_score,
                       metrics.external_refusal, metrics.external_over_refusal, metrics.degenerate):
            if metric is not None:
                metric.reset()
        metrics.samples = []
        return evaluation

    # ------------------------------------------------------------------ free text
    def generate_texts(self, model, tokenizer, prompts: list[str], batch_size: int = 32,
                       system_prompt: Optional[str] = None) -> list[str]:
        """Greedy responses to raw prompts (chat template applied), batched by token length, in prompt order."""
        from ema_lightning.data.collate import prompt_batches

        device = next(model.parameters()).device
        responses: list[str] = [""] * len(prompts)
        for rows, batch in prompt_batches(tokenizer, prompts, batch_size, system_prompt=system_prompt):
            texts = generate(model, tokenizer, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             max_new_tokens=self.max_new_tokens)
            for i, text in zip(rows, texts):
                responses[i] = text
        return responses


def _rates(metric: DomainMean) -> DomainRates:
    refused, total = metric.synced_counts()
    return DomainRates.from_counts(refused.round().long().tolist(), total.tolist())


def _means(metric: DomainMean) -> dict[str, float]:
    total, count = metric.synced_counts()
    return {d: float(total[i] / count[i]) if count[i] else float("nan") for i, d in enumerate(DOMAINS)}


def _spec(obj: Any) -> Optional[dict[str, Any]]:
    """A JSON-able description of a judge (its class and public settings)."""
    if obj is None:
        return None
    return {"class": type(obj).__qualname__, **{k: v for k, v in vars(obj).items() if not k.startswith("_")}}
