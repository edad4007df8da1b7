"""RefusalUnlearningModule: `gamma * forget + alpha * retain_ce (+ retain_kl * KL)`.

The forget objective is NPO against a reference policy, gradient ascent, or compliance fine-tuning
(cross-entropy on compliant responses: the paper's plain fine-tuning comparison). The reference
policy is the same weights with the LoRA adapters disabled, so no second model copy is held; only
full fine-tuning keeps a frozen copy. Reference log-probs of the forget set are computed once per
example and cached.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Optional, Sequence

import torch

from ema_lightning.backbone import Backbone
from ema_lightning.data.records import Record
from ema_lightning.modules.base import CausalLMModule
from ema_lightning.objectives import (
    cross_entropy_loss,
    gradient_ascent_loss,
    kl_to_reference,
    npo_loss,
    sequence_log_probs,
)

ForgetObjective = Literal["npo", "gradient_ascent", "compliance"]


class RefusalUnlearningModule(CausalLMModule):
    """Refusal unlearning on the target domain, with optional retain cross-entropy containment.

    Args:
        forget_objective: `npo` (on the model's refusals), `gradient_ascent` (on the refusals), or
            `compliance` (cross-entropy on compliant responses to the forget prompts).
        beta: NPO inverse temperature (> 0).
        gamma: weight of the forget term (>= 0).
        alpha: weight of the retain cross-entropy (>= 0; 0 = no containment).
        retain_kl: weight of KL(reference || policy) on the retain responses (>= 0).
        backbone, **kwargs: as for `CausalLMModule` (optimizer, scheduler, judge, export, ...).
    """

    def __init__(
        self,
        backbone: Backbone,
        forget_objective: ForgetObjective = "npo",
        beta: float = 0.1,
        gamma: float = 1.0,
        alpha: float = 0.0,
        retain_kl: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if forget_objective not in ("npo", "gradient_ascent", "compliance"):
            raise ValueError(f"forget_objective must be npo, gradient_ascent or compliance, got {forget_objective!r}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0 (NPO inverse temperature), got {beta}")
        for name, value in (("gamma", gamma), ("alpha", alpha), ("retain_kl", retain_kl)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if gamma == 0 and alpha == 0 and retain_kl == 0:
            raise ValueError("gamma, alpha and retain_kl are all 0: nothing to train")
        self.forget_objective = forget_objective
        self.beta = beta
        self.gamma = gamma
        self.alpha = alpha
        self.retain_kl = retain_kl
        self.reference_model: Optional[torch.nn.Module] = None
        self._reference_cache = torch.empty(0)
        self._reference_checksum = torch.empty(0, dtype=torch.long)

    @property
    def method(self) -> str:
        return self.forget_objective

    @property
    def contained(self) -> bool:
        return self.alpha > 0

    def check_data(self, forget: Sequence[Record], retain: Sequence[Record], forget_responses: str) -> None:
        """A weight whose data is absent, or compliance fine-tuning on refusals, is an error, not a silent run."""
        if (self.alpha > 0 or self.retain_kl > 0) and not retain:
            raise ValueError(
                f"model.init_args.alpha={self.alpha} / retain_kl={self.retain_kl} ask for containment, but the retain "
                "set is empty (data.retain_size: 0, or no train records outside the target domain); give retain data "
                "(data.retain_size > 0) or set alpha and retain_kl to 0")
        if self.gamma > 0 and not forget:
            raise ValueError(f"model.init_args.gamma={self.gamma} weighs the forget term, but the forget set is empty; "
                             "set data.target_domain and give forget data, or set gamma to 0")
        if self.forget_objective == "compliance" and self.gamma > 0:
            if forget_responses == "generate":
                raise ValueError("forget_objective 'compliance' trains on compliant responses, but data.forget_responses "
                                 "is 'generate' (the model's own responses, i.e. its refusals); give compliant responses "
                                 "in data.forget (for the built-in data: `- path: builtin:compliance`)")
            refused = self.evaluator.judge([r.response or "" for r in forget])
            if sum(refused) > len(refused) / 2:
                raise ValueError(
                    f"forget_objective 'compliance' trains cross-entropy on compliant responses, but {sum(refused)} of "
                    f"{len(refused)} forget responses are refusals ({type(self.evaluator.judge).__name__}): it would strengthen refusal. "
                    "Give compliant responses in data.forget (for the built-in data: `- path: builtin:compliance`)")

    @property
    def needs_reference(self) -> bool:
        return (self.forget_objective == "npo" and self.gamma > 0) or self.retain_kl > 0

    def on_model_built(self) -> None:
        if self.needs_reference and not self.uses_lora:
            # Full fine-tuning has no adapters to switch off: keep a frozen copy as the reference.
            self.reference_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # Part of the run's state: recomputed after a resume in other batch shapes, the reference
        # log-probs would differ in the last bits and a resumed run would not match an uninterrupted one.
        checkpoint["ema_reference_cache"] = self._reference_cache.clone()
        checkpoint["ema_reference_checksum"] = self._reference_checksum.clone()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "ema_reference_cache" in checkpoint:
            self._reference_cache = checkpoint["ema_reference_cache"].clone()
            # a checkpoint without checksums (older) leaves them 0: not checked
            self._reference_checksum = checkpoint.get(
                "ema_reference_checksum", torch.zeros(self._reference_cache.numel(), dtype=torch.long)).clone()

    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the reference policy: adapters disabled (LoRA) or the frozen copy."""
        with torch.no_grad():
            if self.reference_model is not None:
                return self.reference_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            with self.model.disable_adapter():
                return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def reference_log_probs(self, forget: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reference log-probs of the forget responses, computed once per example and cached by index.

        Each cached value keeps a checksum of its example's tokens: a cache restored from a checkpoint
        of another forget set (another target domain, other data) is refused, not silently reused."""
        index = forget["index"].long().cpu()
        needed = int(index.max()) + 1
        if self._reference_cache.numel() < needed:
            size = max(needed, 2 * self._reference_cache.numel())
            cache, checksum = torch.full((size,), float("nan")), torch.zeros(size, dtype=torch.long)
            cache[: self._reference_cache.numel()] = self._reference_cache
            checksum[: self._reference_checksum.numel()] = self._reference_checksum
            self._reference_cache, self._reference_checksum = cache, checksum
        sums = example_checksums(forget["input_ids"], forget["labels"], forget["attention_mask"]).cpu()
        missing = torch.isnan(self._reference_cache[index])
        known = self._reference_checksum[index]
        stale = ~missing & (known != 0) & (known != sums)
        if stale.any():
            raise ValueError(
                f"the NPO reference log-probs restored from the checkpoint belong to another forget set (forget example "
                f"{int(index[stale][0])} differs): resume with the data settings the checkpoint was trained with, or "
                "start a new run without --ckpt_path")
        if missing.any():
            rows = missing.nonzero().squeeze(1).to(forget["input_ids"].device)
            logits = self.reference_logits(forget["input_ids"][rows], forget["attention_mask"][rows])
            values = sequence_log_probs(logits, forget["labels"][rows]).float().cpu()
            self._reference_cache[index[missing]] = values
            self._reference_checksum[index[missing]] = sums[missing]
        return self._reference_cache[index].to(self.device)

    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor:
        terms: dict[str, torch.Tensor] = {}
        forget, retain = batch.get("forget"), batch.get("retain")
        if forget is not None and self.gamma > 0:
            logits = self(forget["input_ids"], forget["attention_mask"])
            if self.forget_objective == "npo":
                policy = sequence_log_probs(logits, forget["labels"])
                reference = self.reference_log_probs(forget)
                terms["forget"] = npo_loss(policy, reference, self.beta)
                self.log("train/forget_log_ratio", (policy.detach() - reference).mean())
            elif self.forget_objective == "gradient_ascent":
                terms["forget"] = gradient_ascent_loss(logits, forget["labels"])
            else:
                terms["forget"] = cross_entropy_loss(logits, forget["labels"])
        if retain is not None and (self.alpha > 0 or self.retain_kl > 0):
            logits = self(retain["input_ids"], retain["attention_mask"])
            if self.alpha > 0:
                terms["retain"] = cross_entropy_loss(logits, retain["labels"])
            if self.retain_kl > 0:
                reference = self.reference_logits(retain["input_ids"], retain["attention_mask"])
                terms["retain_kl"] = kl_to_reference(logits, reference, retain["labels"])
        weights = {"forget": self.gamma, "retain": self.alpha, "retain_kl": self.retain_kl}
        check_finite(terms, self.global_step)
        loss = sum(weights[name] * value for name, value in terms.items())
        self.log_dict({f"train/{name}": value.detach() for name, value in terms.items()})
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss


def example_checksums(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64 checksum of each example's real tokens and labels, independent of the batch's padding width."""
    positions = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
    mixed = (input_ids.long() * 1_000_003 + labels.long() + 101) * positions * attention_mask.long()
    return mixed.sum(-1) + 1  # never 0: 0 marks "no checksum" in the cache


def check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    """Stop on a NaN/Inf loss term, naming the term and the step."""
    for name, value in terms.items():
        if not torch.isfinite(value.detach()).all():
            raise FloatingPointError(
                f"non-finite {name} loss ({float(value.detach())}) at step {step}; the last checkpoint "
                "is kept. Lower the learning rate, check the data of this step, or use float32."
            )
