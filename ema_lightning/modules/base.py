"""CausalLMModule: the Lightning glue shared by alignment and unlearning.

It builds the backbone (lazily, in `configure_model`, so bad data fails before any weights load),
hands its eval batches to an `Evaluator`, keeps the pre-training baseline for the EMA score,
checkpoints only trainable weights (the LoRA adapters) and exports at the end of fit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only

from ema_lightning.backbone import Backbone, count_parameters, load_model, load_tokenizer
from ema_lightning.baseline_cache import BaselineCache, loader_keys
from ema_lightning.data.records import Record
from ema_lightning.domains import canonical_domain
from ema_lightning.evaluation.evaluator import Evaluator
from ema_lightning.evaluation.judges import LogitRefusalJudge, RefusalJudge
from ema_lightning.evaluation.metrics import ema_score
from ema_lightning.export import Export, export_model
from ema_lightning.layers import scored_logits
from ema_lightning.results import Evaluation, nanmean, save_evaluations

log = logging.getLogger(__name__)


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class CausalLMModule(pl.LightningModule):
    """A causal LM with refusal evaluation across the seven domains.

    Args:
        backbone: which model to load (hub id, local path, GGUF file or tiny config) and its LoRA.
        optimizer: optimizer factory over the trainable parameters.
        scheduler: optional learning-rate scheduler factory (stepped every optimizer step).
        judge: refusal judge over generated responses (default: `LearnedRefusalJudge`).
        logit_judge: when set, refusal is scored from first-token log-odds (one forward, no generation).
        max_new_tokens: greedy tokens generated per eval prompt.
        samples_per_domain: generations kept per domain and harmful/benign for the report.
        export: what to write at the end of fit: the LoRA adapter (PEFT format), the merged model,
            the full model, or nothing. Written to `<log_dir>/export`.
        refusal_score: also log each domain's mean refusal log-odds on harmful prompts
            (`val/refusal_score/<domain>`, read from generation's prefill logits, no extra forward): a
            continuous measure that still moves where refusal rates sit at 0 or 1.
        baseline_cache: folder where step-0 measurements of a fresh adapter on a file-backed base (the
            baseline evaluation, concept vectors) are stored and reused by later runs on the same base
            and prompts (`ema_lightning.baseline_cache`); `ema-lightning study` sets it.
        target_domain: the domain being unlearned (the EMA score is measured on the others). The CLI
            links it to `data.target_domain`.
        audit_judges: judges read beside `judge` on the same responses, by name (default: the learned
            and keyword judges, whichever is not `judge`, and the substring and prefix baselines); their refusal and agreement with `judge` (Cohen's kappa)
            are logged (`val/judges/<name>/...`) and audited in the study report.
        base_margin: under LoRA, a response whose mean token log-prob under the frozen base is more
            than this many nats below the base's own answers at the baseline counts as degenerate
            (`val/base_logprob/<domain>` logs it); null: only the text decides.
    """

    def __init__(
        self,
        backbone: Backbone,
        optimizer: OptimizerCallable = _adamw,
        scheduler: Optional[LRSchedulerCallable] = None,
        judge: Optional[RefusalJudge] = None,
        logit_judge: Optional[LogitRefusalJudge] = None,
        max_new_tokens: int = 24,
        samples_per_domain: int = 2,
        export: Export = "adapter",
        refusal_score: bool = True,
        baseline_cache: Optional[str] = None,
        target_domain: Optional[str] = None,
        audit_judges: Optional[dict[str, RefusalJudge]] = None,
        base_margin: Optional[float] = 8.0,
    ) -> None:
        super().__init__()
        self.evaluator = Evaluator(judge, logit_judge, max_new_tokens, samples_per_domain, refusal_score,
                                   audit_judges=audit_judges, base_margin=base_margin)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "judge", "logit_judge", "audit_judges"])
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.export = export
        self.baseline_cache = BaselineCache(baseline_cache) if baseline_cache else None
        self.target_domain = canonical_domain(target_domain) if target_domain else None
        self.model: Optional[torch.nn.Module] = None
        self._tokenizer = None
        self.baseline: Optional[dict[str, float]] = None
        """Per domain, the share of harmful prompts not answered coherently before training (refused or
        degenerate; `Evaluation.withheld`): the reference of the EMA score."""
        self.evaluations: list[Evaluation] = []
        self._cached_baseline: Optional[Evaluation] = None
        self._baseline_key: Optional[str] = None
        # Checkpoints hold only trainable weights (adapters), so loading must not demand the base.
        self.strict_loading = False

    # ----------------------------------------------------------------- model
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone)
        return self._tokenizer

    @property
    def uses_lora(self) -> bool:
        return self.backbone.lora is not None

    @property
    def method(self) -> str:
        """What this module trains, as a study's report names it."""
        return "alignment"

    @property
    def contained(self) -> bool:
        """Whether the run trains with the retain cross-entropy (containment)."""
        return False

    def configure_model(self) -> None:
        if self.model is not None:
            return
        backbone = self.backbone
        if backbone.tiny is not None and "vocab_size" not in backbone.tiny:
            backbone = dataclasses.replace(backbone, tiny={**backbone.tiny, "vocab_size": len(self.tokenizer)})
        self.model = load_model(backbone)
        if self.device_mesh is not None:  # ModelParallelStrategy: FSDP2 over the decoder layers
            from ema_lightning.distributed import shard_model

            shard_model(self.model, self.device_mesh)
        trainable, total = count_parameters(self.model)
        log.info("backbone loaded: %s parameters, %s trainable", f"{total:,}", f"{trainable:,}")
        self.on_model_built()

    def on_model_built(self) -> None:
        """Hook for subclasses (e.g. a frozen reference copy for full fine-tuning)."""

    def check_data(self, forget: Sequence[Record], retain: Sequence[Record], forget_responses: str) -> None:
        """Stop before training when the data cannot train what this module's settings ask for
        (the CLI calls it once the records are loaded). Alignment trains on any retain set."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def scored(self, batch: dict[str, torch.Tensor],
               model: Optional[torch.nn.Module] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(logits, labels)` of `model` (default: the trained one) on a training batch, the output head
        run on its response positions only (`layers.scored_logits`): what every loss of the objectives
        module reads."""
        model = self.model if model is None else model
        return scored_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def generate_responses(self, prompts: list[str], batch_size: int = 32) -> list[str]:
        """Greedy responses of the current model to raw prompts (what `data.forget_responses: generate` uses)."""
        return self.evaluator.generate_texts(self.model, self.tokenizer, prompts, batch_size)

    # ------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._cached_baseline is None:  # else: the sanity check of a run whose baseline is cached
            self._evaluate("val", batch, dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("test", batch, dataloader_idx)

    def _evaluate(self, stage: str, batch: dict[str, Any], dataloader_idx: int) -> None:
        """A batch with `labels` (teacher-forced helpful answers) measures utility; a prompt batch refusal,
        dataloader 1 being the external set (`RefusalDataModule.val_dataloader`)."""
        if "labels" in batch:
            self.evaluator.update_utility(stage, self.model, batch)
        else:
            self.evaluator.update(stage, self.model, self.tokenizer, batch, external=dataloader_idx == 1)

    def _baseline_pass(self) -> bool:
        """Whether the running validation measures the model before training (the sanity check)."""
        return self.trainer.sanity_checking

    def _evaluation_step(self) -> int:
        """The optimizer step an evaluation describes (0 for the baseline)."""
        return 0 if self._baseline_pass() else self.global_step

    def _baseline_batches(self) -> Any:
        """How many batches of each eval loader the baseline reads (part of its cache key)."""
        return self.trainer.num_sanity_val_steps

    def on_validation_epoch_start(self) -> None:
        self._cached_baseline, self._baseline_key = None, None
        if self._baseline_pass() and self.baseline_cache is not None:
            self._baseline_key = self.baseline_cache.key(
                "evaluation", self.backbone, self.model, self.trainer, loaders=loader_keys(self.trainer.val_dataloaders),
                sanity_batches=self._baseline_batches(), evaluator=self.evaluator.settings())
            if self._baseline_key is not None:
                self._cached_baseline = self.baseline_cache.load_evaluation(self._baseline_key, self.trainer)
                if self._cached_baseline is not None:
                    log.info("baseline evaluation reused from %s", self.baseline_cache.directory)

    def on_validation_epoch_end(self) -> None:
        sanity = self._baseline_pass()
        evaluation = self._cached_baseline if sanity and self._cached_baseline is not None else \
            self.evaluator.compute("val", "baseline" if sanity else "val", self._evaluation_step(), self.current_epoch)
        if sanity and self._cached_baseline is None and self._baseline_key is not None:
            self.baseline_cache.store_evaluation(self._baseline_key, evaluation, self.trainer)
        if sanity or (self.baseline is None and self.global_step == 0):
            self.baseline = evaluation.withheld.rates
            if evaluation.base_logprob is not None:
                self.evaluator.reference_logprob = nanmean(evaluation.base_logprob.values())
        self._record(evaluation, log_to_callbacks=not sanity)

    def on_test_epoch_end(self) -> None:
        self._record(self.evaluator.compute("test", "test", self.global_step, self.current_epoch), log_to_callbacks=True)

    def _record(self, evaluation: Evaluation, log_to_callbacks: bool) -> None:
        """Add the EMA score, keep the evaluation, log it and rewrite `eval_history.json`."""
        if self.baseline is not None and self.target_domain is not None:
            score = ema_score(self.baseline, evaluation.withheld.rates, self.target_domain)
            if math.isnan(score):
                log.warning("EMA score undefined at step %d: no domain other than the target %s has harmful eval "
                            "prompts (refusal before and now); evaluate on more than the target domain",
                            evaluation.step, self.target_domain)
            evaluation = dataclasses.replace(evaluation, ema_score=score)
        self.evaluations.append(evaluation)
        prefix = "test" if evaluation.stage == "test" else "val"
        metrics = {k: v for k, v in evaluation.metrics(prefix).items() if not math.isnan(v)}
        if self.target_domain is not None:
            target = evaluation.refusal[self.target_domain]
            if not math.isnan(target):
                metrics[f"{prefix}/target_refusal"] = target
        # Loggers get the metrics at the optimizer step they describe (the baseline at step 0, which
        # Lightning's self.log would drop during the sanity check); self.log feeds callbacks only.
        self._log_to_loggers(metrics, step=evaluation.step)
        if log_to_callbacks:
            self.log_dict(metrics, logger=False, rank_zero_only=True)
        self._write_history(self.run_dir)  # run_dir on every rank: trainer.log_dir is a broadcast

    @rank_zero_only
    def _log_to_loggers(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    @rank_zero_only
    def _write_history(self, directory: Optional[Path]) -> None:
        if directory is not None:
            save_evaluations(directory / "eval_history.json", self.evaluations)

    @property
    def run_dir(self) -> Optional[Path]:
        if self._trainer is None:
            return None
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(log_dir) if log_dir else None

    # ----------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.uses_lora:
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        if self.baseline is not None:
            checkpoint["ema_baseline"] = dict(self.baseline)
        checkpoint["ema_reference_logprob"] = self.evaluator.reference_logprob

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema_baseline" in checkpoint:
            self.baseline = dict(checkpoint["ema_baseline"])
        self.evaluator.reference_logprob = checkpoint.get("ema_reference_logprob")

    def on_fit_end(self) -> None:
        self.export_model()

    def export_model(self, directory: Optional[Path] = None) -> Path:
        """Export (see `ema_lightning.export`) to `directory`, by default `<log_dir>/export`; returns it."""
        directory = Path(directory) if directory is not None else (self.run_dir or Path(".")) / "export"
        if self.model is not None:
            self.model = export_model(self.model, self.tokenizer, self.export, directory, uses_lora=self.uses_lora,
                                      random_base=self.backbone.tiny is not None, rank_zero=self.global_rank == 0)
        return directory
