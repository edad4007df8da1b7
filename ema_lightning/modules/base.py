"""CausalLMModule: the Lightning glue shared by alignment and unlearning.

It builds the backbone (lazily, in `configure_model`, so bad data fails before any weights load),
measures refusal per domain during validation, keeps the pre-training baseline for the EMA score,
checkpoints only trainable weights (the LoRA adapters) and exports the adapter in PEFT format.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only

from ema_lightning.backbone import Backbone, count_parameters, load_model, load_tokenizer
from ema_lightning.baseline_cache import base_fingerprint, cache_key, is_fresh_adapter, record_keys, spec
from ema_lightning.data.collate import format_prompt
from ema_lightning.domains import DOMAINS, canonical_domain
from ema_lightning.evaluation.generation import bucket_by_length, generate
from ema_lightning.evaluation.judges import KeywordRefusalJudge, LogitRefusalJudge, RefusalJudge
from ema_lightning.evaluation.metrics import DomainMeanScore, DomainRefusalRate, as_dict, ema_score

log = logging.getLogger(__name__)

Export = Literal["adapter", "merged", "full", "none"]


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class CausalLMModule(pl.LightningModule):
    """A causal LM with refusal evaluation across the seven domains.

    Args:
        backbone: which model to load (hub id, local path, GGUF file or tiny config) and its LoRA.
        optimizer: optimizer factory over the trainable parameters.
        scheduler: optional learning-rate scheduler factory (stepped every optimizer step).
        judge: refusal judge over generated responses (default: `KeywordRefusalJudge`).
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
    ) -> None:
        super().__init__()
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "judge", "logit_judge"])
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.judge = judge if judge is not None else KeywordRefusalJudge()
        self.logit_judge = logit_judge
        self.max_new_tokens = max_new_tokens
        self.samples_per_domain = samples_per_domain
        self.export = export
        self.baseline_cache = baseline_cache
        self._cached_baseline: Optional[dict[str, Any]] = None
        self._baseline_key: Optional[str] = None
        self.model: Optional[torch.nn.Module] = None
        self._tokenizer = None
        self.val_refusal = DomainRefusalRate()
        self.val_over_refusal = DomainRefusalRate()
        self.val_refusal_score = DomainMeanScore() if refusal_score else None
        self._score_judge = LogitRefusalJudge() if refusal_score else None
        # The optional second eval set (mapped public benchmarks), reported as `<stage>_external/...`.
        self.external_refusal = DomainRefusalRate()
        self.external_over_refusal = DomainRefusalRate()
        self.baseline: Optional[torch.Tensor] = None
        self.history: list[dict[str, Any]] = []
        self._samples: list[dict[str, Any]] = []
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
    def _datamodule(self):
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    @property
    def target_domain(self) -> Optional[str]:
        target = getattr(self._datamodule, "target_domain", None)
        return canonical_domain(target) if target else None

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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------ generation
    def generate_responses(self, prompts: list[str], batch_size: int = 32) -> list[str]:
        """Greedy responses of the current model to raw prompts (chat template applied), in batches of
        similar token length."""
        tokenizer = self.tokenizer
        texts = [format_prompt(tokenizer, p) for p in prompts]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        responses: list[str] = [""] * len(texts)
        for rows in bucket_by_length(lengths, batch_size):
            enc = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=False)
            out = generate(self.model, tokenizer, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device),
                           max_new_tokens=self.max_new_tokens)
            for i, text in zip(rows, out):
                responses[i] = text
        return responses

    # ------------------------------------------------------------ validation
    def _judge_batch(self, batch: dict[str, Any], scores: bool) -> tuple[torch.Tensor, list[str] | None, torch.Tensor | None]:
        """Refusal flags, the responses (None under the logit judge) and, with `scores`, the refusal
        log-odds, taken from the same forward pass (the logit judge's, or generation's prefill)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.logit_judge is not None:
            judge = self._prepared(self.logit_judge)
            logits = judge.last_logits(self.model, ids, mask)
            refused, responses = judge.log_odds(logits) > judge.threshold, None
        else:
            sink: list[torch.Tensor] | None = [] if scores else None
            responses = generate(self.model, self.tokenizer, ids, mask, max_new_tokens=self.max_new_tokens, first_logits=sink)
            refused = torch.tensor(self.judge(responses, batch["prompts"]), dtype=torch.bool)
            logits = sink[0] if sink else None
        log_odds = self._prepared(self._score_judge).log_odds(logits) if scores and logits is not None else None
        return refused.to(self.device).bool(), responses, log_odds

    def _prepared(self, judge: LogitRefusalJudge) -> LogitRefusalJudge:
        """The judge with its first-token ids taken from the tokenizer once, not at every eval batch."""
        if judge.refusal_ids is None:
            judge.prepare(self.tokenizer)
        return judge

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._cached_baseline is not None:
            return  # the sanity check of a run whose baseline evaluation is cached (see on_validation_epoch_start)
        want_scores = self.val_refusal_score is not None and dataloader_idx == 0
        refused, responses, scores = self._judge_batch(batch, want_scores)
        valid = batch.get("valid")
        valid = torch.ones_like(refused) if valid is None else valid.to(refused.device).bool()
        harmful = batch["harmful"].to(refused.device).bool()
        refusal, over_refusal = (
            (self.val_refusal, self.val_over_refusal) if dataloader_idx == 0
            else (self.external_refusal, self.external_over_refusal)
        )
        refusal.update(refused, batch["domain_ids"], valid & harmful)
        over_refusal.update(refused, batch["domain_ids"], valid & ~harmful)
        if scores is not None:
            self.val_refusal_score.update(scores.float(), batch["domain_ids"], valid & harmful)
        if responses is not None and dataloader_idx == 0:
            self._keep_samples(batch, responses, refused, valid)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    @property
    def has_external_eval(self) -> bool:
        return bool(getattr(self._datamodule, "external_eval_records", None))

    def _keep_samples(self, batch, responses, refused, valid) -> None:
        for i, response in enumerate(responses):
            if not bool(valid[i]):
                continue
            domain = DOMAINS[int(batch["domain_ids"][i])]
            harmful = bool(batch["harmful"][i])
            kept = sum(1 for s in self._samples if s["domain"] == domain and s["harmful"] == harmful)
            if kept < self.samples_per_domain:
                self._samples.append(
                    {"domain": domain, "harmful": harmful, "prompt": batch["prompts"][i],
                     "response": response, "refused": bool(refused[i])}
                )

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def on_validation_epoch_start(self) -> None:
        self._cached_baseline, self._baseline_key = None, None
        if self.trainer.sanity_checking:
            self._baseline_key = self._evaluation_key()
            if self._baseline_key is not None:
                path = self._baseline_file(self._baseline_key)
                entry = json.loads(path.read_text()) if self.trainer.is_global_zero and path.is_file() else None
                self._cached_baseline = self.trainer.strategy.broadcast(entry)
                if self._cached_baseline is not None:
                    log.info("baseline evaluation reused from %s", path)

    def _evaluation_key(self) -> Optional[str]:
        data = self._datamodule
        return self.baseline_cache_key(
            "evaluation",
            eval=record_keys(getattr(data, "eval_records", None) or []),
            external=record_keys(getattr(data, "external_eval_records", None) or []),
            data={k: getattr(data, k, None) for k in ("max_prompt_length", "eval_batch_size")},
            sanity_batches=self.trainer.num_sanity_val_steps,
            max_new_tokens=self.max_new_tokens, samples_per_domain=self.samples_per_domain,
            judge=spec(self.judge), logit_judge=spec(self.logit_judge), refusal_score=self.val_refusal_score is not None,
        )

    def baseline_cache_key(self, kind: str, **parts: Any) -> Optional[str]:
        """Key of a step-0 measurement of this run's base (see `ema_lightning.baseline_cache`), or None
        when it must be measured: no `baseline_cache`, past step 0, or a model that is not its base.
        Collective under DDP/FSDP: every rank calls it."""
        if self.baseline_cache is None or self.model is None or self._trainer is None or self.global_step != 0:
            return None
        fingerprint = base_fingerprint(self.backbone)
        fresh = fingerprint is not None and is_fresh_adapter(self.model)
        if not self.trainer.strategy.reduce_boolean_decision(fresh, all=True):
            return None
        return cache_key(kind=kind, base=fingerprint, **parts)

    def _baseline_file(self, key: str) -> Path:
        return Path(self.baseline_cache) / f"evaluation-{key}.json"

    def _measured(self) -> dict[str, Any]:
        """This evaluation's results from the (synced) metrics, which are reset for the next one."""
        entry: dict[str, Any] = {}
        for name, metric in (("refusal", self.val_refusal), ("over_refusal", self.val_over_refusal),
                             ("refusal_score", self.val_refusal_score)):
            if metric is not None:
                entry[name] = as_dict(metric.compute().cpu())
                metric.reset()
        if self.has_external_eval:
            for name, metric in (("external_refusal", self.external_refusal), ("external_over_refusal", self.external_over_refusal)):
                entry[name] = as_dict(metric.compute().cpu())
                metric.reset()
        entry["samples"], self._samples = self._samples, []
        return entry

    def _finish_evaluation(self, stage: str) -> None:
        sanity = self._trainer is not None and self.trainer.sanity_checking
        cached = self._cached_baseline if sanity else None
        entry = dict(cached) if cached is not None else self._measured()
        refusal, over_refusal = _tensor(entry["refusal"]), _tensor(entry["over_refusal"])
        metrics = _rate_metrics(stage, refusal, over_refusal)
        if "refusal_score" in entry:
            metrics.update({f"{stage}/refusal_score/{d}": v for d, v in entry["refusal_score"].items()})
        if "external_refusal" in entry:
            metrics.update(_rate_metrics(f"{stage}_external", _tensor(entry["external_refusal"]),
                                         _tensor(entry["external_over_refusal"])))
        target = self.target_domain
        if sanity or (self.baseline is None and self.global_step == 0 and stage == "val"):
            self.baseline = refusal.clone()
        if self.baseline is not None and target is not None:
            metrics[f"{stage}/ema_score"] = ema_score(self.baseline, refusal, target)
            metrics[f"{stage}/target_refusal"] = float(refusal[DOMAINS.index(target)])
        step = 0 if sanity else self.global_step
        self.history.append(
            {"stage": "baseline" if sanity else stage, "step": step, "epoch": self.current_epoch,
             **entry, "ema_score": metrics.get(f"{stage}/ema_score")}
        )
        if sanity and cached is None and self._baseline_key is not None:
            self._store(self._baseline_file(self._baseline_key), json.dumps(entry, indent=1))
        # Loggers get the metrics at the optimizer step they describe (the baseline at step 0, which
        # Lightning's self.log would drop during the sanity check); self.log feeds callbacks only.
        self._log_to_loggers(metrics, step=step)
        if not sanity:
            finite = {k: v for k, v in metrics.items() if not math.isnan(v)}
            self.log_dict(finite, logger=False, rank_zero_only=True)
        self._write_history(self.run_dir)  # run_dir on every rank: trainer.log_dir is a broadcast

    @rank_zero_only
    def _store(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        temporary.replace(path)  # atomic: a concurrent reader sees the whole file or none

    @rank_zero_only
    def _log_to_loggers(self, metrics: dict[str, float], step: int) -> None:
        finite = {k: v for k, v in metrics.items() if not math.isnan(v)}
        for logger in self.loggers:
            logger.log_metrics(finite, step=step)

    @rank_zero_only
    def _write_history(self, directory: Optional[Path]) -> None:
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "eval_history.json").write_text(json.dumps(self.history, indent=1))

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
            checkpoint["ema_baseline"] = self.baseline

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema_baseline" in checkpoint:
            self.baseline = checkpoint["ema_baseline"]

    def on_fit_end(self) -> None:
        self.export_model()

    def export_model(self, directory: Optional[Path] = None) -> Optional[Path]:
        """Write `adapter/` (PEFT format), `model/` (merged or full) and, for a randomly initialised
        tiny base that cannot be loaded from anywhere else, `base/`. Rank 0 only; returns the folder."""
        if self.export == "none" or self.model is None:
            return None
        directory = Path(directory) if directory is not None else (self.run_dir or Path(".")) / "export"
        from ema_lightning.distributed import full_state_dict

        state = full_state_dict(self.model)  # collective under FSDP2: every rank takes part
        if self.global_rank != 0:
            return directory
        model, export = self.model, self.export
        if export == "adapter" and not self.uses_lora:
            log.warning("export='adapter' without LoRA: writing the full model instead")
            export = "full"
        if export == "adapter":
            model.save_pretrained(directory / "adapter", state_dict=state)
            self.tokenizer.save_pretrained(directory / "adapter")
            if self.backbone.tiny is not None:
                base = model.get_base_model()
                base.save_pretrained(directory / "base", state_dict=base_state_dict(base, state))
                self.tokenizer.save_pretrained(directory / "base")
        else:
            if export == "merged" and self.uses_lora:
                model = self.model = model.merge_and_unload()
            model.save_pretrained(directory / "model", state_dict=state)
            self.tokenizer.save_pretrained(directory / "model")
        log.info("exported %s to %s", export, directory)
        return directory


def base_state_dict(model: torch.nn.Module, full: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """State dict of a LoRA-injected model as the plain base model would have it."""
    state = {}
    source = model.state_dict() if full is None else {k.removeprefix("base_model.model."): v for k, v in full.items()}
    for key, value in source.items():
        if "lora_" in key or "lora_magnitude" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state


def _tensor(rates: dict[str, float]) -> torch.Tensor:
    """Per-domain values (a history dict) as a tensor in `DOMAINS` order."""
    return torch.tensor([rates[d] for d in DOMAINS], dtype=torch.float32)


def _nanmean(rates: torch.Tensor) -> float:
    finite = rates[~torch.isnan(rates)]
    return float(finite.mean()) if finite.numel() else float("nan")


def _rate_metrics(stage: str, refusal: torch.Tensor, over_refusal: torch.Tensor) -> dict[str, float]:
    metrics = {f"{stage}/refusal/{d}": float(refusal[i]) for i, d in enumerate(DOMAINS)}
    metrics[f"{stage}/refusal/mean"] = _nanmean(refusal)
    metrics.update({f"{stage}/over_refusal/{d}": float(over_refusal[i]) for i, d in enumerate(DOMAINS)})
    metrics[f"{stage}/over_refusal/mean"] = _nanmean(over_refusal)
    return metrics
