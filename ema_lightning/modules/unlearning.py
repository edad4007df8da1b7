"""RefusalUnlearningModule: `gamma * forget + alpha * retain (+ retain_kl * KL)`.

The forget objective is NPO against a reference policy, SimNPO (reference-free, length-normalised),
DPO (compliant response preferred over the reference model's own refusal), RMU (forget-set hidden
states steered toward a random direction), gradient ascent, or compliance fine-tuning (cross-entropy
on compliant responses: the paper's plain fine-tuning comparison). The retain term is the retain
cross-entropy, except under RMU, where it is RMU's own activation loss against the reference. The
reference policy is the same weights with the LoRA adapters disabled, so no second model copy is
held; only full fine-tuning keeps a frozen copy. Reference log-probs of the forget set are computed
once per example and cached (NPO, DPO), as are DPO's rejected responses.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any, Literal, Optional, Sequence, get_args

import torch

from ema_lightning.backbone import Backbone
from ema_lightning.data.collate import (
    IGNORE_INDEX,
    TrainCollator,
    left_pad,
    pad_token_id,
    prompt_rows,
)
from ema_lightning.data.records import Record
from ema_lightning.layers import decoder_layers, layer_output
from ema_lightning.modules.base import CausalLMModule
from ema_lightning.objectives import (
    activation_mse,
    cross_entropy_loss,
    dpo_loss,
    gradient_ascent_loss,
    kl_to_reference,
    npo_loss,
    random_unit_vector,
    sequence_log_probs,
    simnpo_loss,
    token_log_probs,
)

ForgetObjective = Literal["npo", "simnpo", "dpo", "rmu", "gradient_ascent", "compliance", "relearn"]
FORGET_OBJECTIVES: tuple[str, ...] = get_args(ForgetObjective)
COMPLIANT_FORGET = ("compliance", "dpo")
"""Forget objectives that train toward the forget records' responses, which must be compliant."""


class RefusalUnlearningModule(CausalLMModule):
    """Refusal unlearning on the target domain, with optional retain cross-entropy containment.

    Args:
        forget_objective: `npo` (on the model's refusals), `simnpo` (on the refusals, no reference),
            `dpo` (the forget records' compliant responses chosen over the reference model's own greedy
            response, its refusal), `rmu` (hidden states of the forget records steered to a random
            direction), `gradient_ascent` (on the refusals), `compliance` (cross-entropy on
            compliant responses to the forget prompts), or `relearn` (cross-entropy on the refusals: the
            study's relearning check, continuing an unlearned run's adapter, `Backbone.adapter`).
        beta: inverse temperature of NPO, SimNPO and DPO (> 0).
        gamma: weight of the forget term (>= 0).
        alpha: weight of the retain term (>= 0; 0 = no containment): the retain cross-entropy, or under
            `rmu` RMU's retain loss (hidden states at `rmu_layer` against the reference), in place of it.
        retain_kl: weight of KL(reference || policy) on the retain responses (>= 0).
        delta: SimNPO's margin, in open-unlearning's convention: the loss reads
            `beta * (mean NLL - delta)`, so the paper's margin gamma is `beta * delta`.
        steering_coeff: RMU's steering coefficient c: forget hidden states are pulled toward `c * u`.
        rmu_layer: RMU's decoder layer (index into the decoder layers; negative counts from the end).
        rmu_seed: seed of RMU's random unit vector u (re-derived from it, and kept in checkpoints).
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
        delta: float = 0.0,
        steering_coeff: float = 20.0,
        rmu_layer: int = 7,
        rmu_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if forget_objective not in FORGET_OBJECTIVES:
            raise ValueError(f"forget_objective must be one of {', '.join(FORGET_OBJECTIVES)}, got {forget_objective!r}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0 (NPO / SimNPO / DPO inverse temperature), got {beta}")
        if steering_coeff <= 0:
            raise ValueError(f"steering_coeff must be > 0 (RMU's c; WMDP uses 20 on Zephyr-7B), got {steering_coeff}")
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
        self.delta = delta
        self.steering_coeff = steering_coeff
        self.rmu_layer = rmu_layer
        self.rmu_seed = rmu_seed
        self.reference_model: Optional[torch.nn.Module] = None
        self._reference_cache = torch.empty(0)
        self._reference_checksum = torch.empty(0, dtype=torch.long)
        self.control_vector: torch.Tensor | None = None
        """RMU's `c * u`, (hidden,) float32, drawn once in `on_model_built` (or restored from a checkpoint)."""
        self._rejected: dict[int, list[int]] = {}
        """DPO: forget example index -> token ids of the reference model's own response (rejected)."""
        self._rejected_reference: dict[int, float] = {}
        """DPO: forget example index -> reference log-prob of that rejected response."""

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
        if self.forget_objective == "relearn" and self.gamma > 0:
            if forget_responses == "generate":
                raise ValueError("forget_objective 'relearn' trains toward the target's refusals, but data.forget_responses "
                                 "is 'generate' (the unlearned model's own, compliant responses); use 'data'")
            refused = self.evaluator.judge([r.response or "" for r in forget])
            if sum(refused) < len(refused) / 2:
                raise ValueError(
                    f"forget_objective 'relearn' trains toward refusals, but only {sum(refused)} of {len(refused)} "
                    f"forget responses are refusals ({type(self.evaluator.judge).__name__}); give the target's refusals "
                    "in data.forget (the built-in train data by default: drop a `builtin:compliance` forget source)")
        if self.forget_objective in COMPLIANT_FORGET and self.gamma > 0:
            name = self.forget_objective
            if forget_responses == "generate":
                raise ValueError(f"forget_objective '{name}' trains toward compliant responses, but data.forget_responses "
                                 "is 'generate' (the model's own responses, i.e. its refusals); give compliant responses "
                                 "in data.forget (for the built-in data: `- path: builtin:compliance`)")
            refused = self.evaluator.judge([r.response or "" for r in forget])
            if sum(refused) > len(refused) / 2:
                raise ValueError(
                    f"forget_objective '{name}' trains toward compliant responses, but {sum(refused)} of "
                    f"{len(refused)} forget responses are refusals ({type(self.evaluator.judge).__name__}): it would strengthen refusal. "
                    "Give compliant responses in data.forget (for the built-in data: `- path: builtin:compliance`)")

    @property
    def needs_reference(self) -> bool:
        """Whether a term reads the reference policy: NPO and DPO's forget term, RMU's retain term, the KL."""
        forget = self.forget_objective in ("npo", "dpo") and self.gamma > 0
        rmu_retain = self.forget_objective == "rmu" and self.alpha > 0
        return forget or rmu_retain or self.retain_kl > 0

    def on_model_built(self) -> None:
        if self.needs_reference and not self.uses_lora:
            # Full fine-tuning has no adapters to switch off: keep a frozen copy as the reference.
            self.reference_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        if self.forget_objective == "rmu":
            layer_index(self.model, self.rmu_layer)  # an out-of-range layer fails before training
            if self.control_vector is None:
                hidden = self.model.config.hidden_size
                self.control_vector = self.steering_coeff * random_unit_vector(hidden, self.rmu_seed)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # Part of the run's state: recomputed after a resume in other batch shapes, the reference
        # log-probs would differ in the last bits and a resumed run would not match an uninterrupted one.
        checkpoint["ema_reference_cache"] = self._reference_cache.clone()
        checkpoint["ema_reference_checksum"] = self._reference_checksum.clone()
        if self.control_vector is not None:
            checkpoint["ema_rmu_control_vector"] = self.control_vector.clone()
        if self._rejected:
            checkpoint["ema_dpo_rejected"] = {i: list(ids) for i, ids in self._rejected.items()}
            checkpoint["ema_dpo_rejected_reference"] = dict(self._rejected_reference)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "ema_reference_cache" in checkpoint:
            self._reference_cache = checkpoint["ema_reference_cache"].clone()
            # a checkpoint without checksums (older) leaves them 0: not checked
            self._reference_checksum = checkpoint.get(
                "ema_reference_checksum", torch.zeros(self._reference_cache.numel(), dtype=torch.long)).clone()
        if "ema_rmu_control_vector" in checkpoint:
            self.control_vector = checkpoint["ema_rmu_control_vector"].clone()
        self._rejected = {int(i): list(ids) for i, ids in checkpoint.get("ema_dpo_rejected", {}).items()}
        self._rejected_reference = {int(i): float(v) for i, v in checkpoint.get("ema_dpo_rejected_reference", {}).items()}

    @contextlib.contextmanager
    def reference_policy(self) -> Iterator[torch.nn.Module]:
        """The reference policy to run: the model with its adapters disabled (LoRA), or the frozen copy."""
        if self.reference_model is not None:
            yield self.reference_model
            return
        with self.model.disable_adapter():
            yield self.model

    def reference_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(logits, labels)` of the reference policy (adapters disabled, or the frozen copy) on `batch`,
        at its response positions only (`layers.scored_logits`)."""
        with torch.no_grad(), self.reference_policy() as model:
            return self.scored(batch, model)

    def hidden_states(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(logits, hidden)` of one forward of `model`, hidden (B, T, H) read by a hook on decoder layer `rmu_layer`."""
        layer = decoder_layers(model)[layer_index(model, self.rmu_layer)]
        with layer_output(layer) as captured:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return logits, captured[0]

    def rejected_batch(self, forget: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """DPO's rejected side of a forget batch: each row's prompt followed by the reference model's own
        greedy response to it (its refusal), and the reference log-probs of those responses, (B,).

        A response is generated once per forget example, by the reference (adapters disabled), with
        the evaluator's `max_new_tokens`, kept up to its first stop token, and cached by example index
        with its reference log-prob (both saved in checkpoints)."""
        from ema_lightning.evaluation.generation import generate, stop_token_ids

        index = forget["index"].tolist()
        prompts = prompt_rows(forget)
        missing = [row for row, example in enumerate(index) if example not in self._rejected]
        pad = pad_token_id(self.tokenizer)
        if missing:
            input_ids, attention_mask = left_pad([prompts[row] for row in missing], pad)
            sequences: list[torch.Tensor] = []
            with torch.no_grad(), self.reference_policy() as model:
                generate(model, self.tokenizer, input_ids.to(self.device), attention_mask.to(self.device),
                         max_new_tokens=self.evaluator.max_new_tokens, sequences=sequences)
                stops = set(stop_token_ids(self.tokenizer, model))
            for row, tokens in zip(missing, sequences[0][:, input_ids.shape[1]:].tolist()):
                end = next((t + 1 for t, token in enumerate(tokens) if token in stops), len(tokens))
                self._rejected[index[row]] = tokens[:end]
            new = self._pair_rows([prompts[row] for row in missing], [index[row] for row in missing], pad)
            values = sequence_log_probs(*self.reference_logits(new))
            for row, value in zip(missing, values.tolist()):
                self._rejected_reference[index[row]] = value
        batch = self._pair_rows(prompts, index, pad)
        reference = torch.tensor([self._rejected_reference[example] for example in index], device=self.device)
        return batch, reference

    def _pair_rows(self, prompts: list[list[int]], index: list[int], pad: int) -> dict[str, torch.Tensor]:
        examples = [{"input_ids": prompt + self._rejected[example], "labels": [IGNORE_INDEX] * len(prompt) + self._rejected[example],
                     "index": example, "domain_id": 0} for prompt, example in zip(prompts, index)]
        return {k: v.to(self.device) for k, v in TrainCollator(pad)(examples).items()}

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
            missing_rows = {k: forget[k][rows] for k in ("input_ids", "attention_mask", "labels")}
            values = sequence_log_probs(*self.reference_logits(missing_rows)).float().cpu()
            self._reference_cache[index[missing]] = values
            self._reference_checksum[index[missing]] = sums[missing]
        return self._reference_cache[index].to(self.device)

    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor:
        terms: dict[str, torch.Tensor] = {}
        forget, retain = batch.get("forget"), batch.get("retain")
        objective = self.forget_objective
        if forget is not None and self.gamma > 0:
            if objective == "rmu":
                _, hidden = self.hidden_states(self.model, forget)
                terms["forget"] = activation_mse(hidden, self.control_vector.to(hidden.device), forget["attention_mask"])
            else:
                terms["forget"] = self.forget_loss(*self.scored(forget), forget)
        if retain is not None and (self.alpha > 0 or self.retain_kl > 0):
            rmu_retain = objective == "rmu" and self.alpha > 0
            if rmu_retain:
                logits, hidden = self.hidden_states(self.model, retain)
                labels = retain["labels"]
                with torch.no_grad(), self.reference_policy() as model:
                    reference_logits, reference_hidden = self.hidden_states(model, retain)
                terms["retain"] = activation_mse(hidden, reference_hidden, retain["attention_mask"])
            else:
                logits, labels = self.scored(retain)
                if self.alpha > 0:
                    terms["retain"] = cross_entropy_loss(logits, labels)
            if self.retain_kl > 0:
                if not rmu_retain:
                    reference_logits, _ = self.reference_logits(retain)
                terms["retain_kl"] = kl_to_reference(logits, reference_logits, labels)
        weights = {"forget": self.gamma, "retain": self.alpha, "retain_kl": self.retain_kl}
        check_finite(terms, self.global_step)
        loss = sum(weights[name] * value for name, value in terms.items())
        self.log_dict({f"train/{name}": value.detach() for name, value in terms.items()})
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    def forget_loss(self, logits: torch.Tensor, labels: torch.Tensor, forget: dict[str, torch.Tensor]) -> torch.Tensor:
        """The forget term of the log-prob objectives (all but RMU) on the policy's forget-batch `scored` logits and labels."""
        objective = self.forget_objective
        if objective == "npo":
            policy = sequence_log_probs(logits, labels)
            reference = self.reference_log_probs(forget)
            self.log("train/forget_log_ratio", (policy.detach() - reference).mean())
            return npo_loss(policy, reference, self.beta)
        if objective == "simnpo":
            log_probs, mask = token_log_probs(logits, labels)
            return simnpo_loss(log_probs.sum(-1), mask.sum(-1), self.beta, self.delta)
        if objective == "dpo":
            chosen = sequence_log_probs(logits, labels)
            reference_chosen = self.reference_log_probs(forget)
            rejected_batch, reference_rejected = self.rejected_batch(forget)
            rejected = sequence_log_probs(*self.scored(rejected_batch))
            margin = (chosen.detach() - reference_chosen) - (rejected.detach() - reference_rejected)
            self.log("train/dpo_margin", margin.mean())
            return dpo_loss(chosen, rejected, reference_chosen, reference_rejected, self.beta)
        if objective == "gradient_ascent":
            return gradient_ascent_loss(logits, labels)
        return cross_entropy_loss(logits, labels)  # compliance, relearn


def layer_index(model: torch.nn.Module, layer: int) -> int:
    """`layer` as a non-negative index into `decoder_layers(model)` (negative counts from the end)."""
    count = len(decoder_layers(model))
    if not -count <= layer < count:
        raise ValueError(f"model.init_args.rmu_layer={layer}, but the model has {count} decoder layers; "
                         f"give an index in [{-count}, {count - 1}] (WMDP uses 7 of Zephyr-7B's 32)")
    return layer % count


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
