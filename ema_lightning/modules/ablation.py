"""RefusalAblationModule: refusal-direction ablation (Arditi et al. 2024) as a run beside unlearning.

Nothing is trained. `ema-lightning ablate` (or `fit` with this module) evaluates the model, finds the
direction on the train prompts and chooses its layer on held-out ones (`ema_lightning.ablation`),
projects it out of the residual stream with hooks, and evaluates again on the same prompts as every
other run: the report compares unlearning, fine-tuning and ablation side by side. With
`export: merged` (or `full`) the weights that write to the stream are orthogonalised to the
direction and the edited model is written to `<log_dir>/export/model`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch

from ema_lightning.ablation import (
    DirectionKind,
    candidate_layers,
    choose_layer,
    directions,
    prompt_groups,
    score_layers,
    selection_table,
)
from ema_lightning.backbone import Backbone
from ema_lightning.concepts.capture import POSITIONS, capture_activations
from ema_lightning.concepts.extract import cap_prompts
from ema_lightning.evaluation.judges import LogitRefusalJudge
from ema_lightning.export import Export, export_model
from ema_lightning.layers import DirectionalAblation, orthogonalize_weights
from ema_lightning.modules.base import CausalLMModule
from ema_lightning.results import ABLATION_METHODS

log = logging.getLogger(__name__)


class RefusalAblationModule(CausalLMModule):
    """Refusal-direction ablation: evaluate, ablate the direction, evaluate again (no training).

    Args:
        direction: `refusal` (all harmful minus all harmless prompts) or `domain` (the target domain's
            harmful prompts minus its benign look-alikes, the global refusal direction projected out).
        layer: hidden-state index of the direction (0 = embeddings, l = output of decoder layer l);
            None: chosen on held-out train prompts (`ema_lightning.ablation`).
        position: activations at the `last` prompt token (post-instruction) or the `mean` over the prompt.
        max_layer_fraction: candidate layers go up to this share of the depth (the paper: 0.8).
        max_kl: candidates that move the next-token distribution on harmless prompts by more than this
            KL (nats) are passed over (the paper: 0.1).
        selection_every: one train prompt in this many, per domain and harmful/benign, is held out to
            choose the layer; the others give the direction.
        max_prompts_per_domain: cap on the direction's harmful and benign prompts per domain.
        batch_size: prompts per forward of the capture and the selection.
        export: `merged`/`full`: write the weight-orthogonalised model; `none`: the direction file only.
        backbone, **kwargs: as for `CausalLMModule` (judge, max_new_tokens, target_domain, ...);
            an optimizer given by a shared config is accepted and unused.
    """

    def __init__(
        self,
        backbone: Backbone,
        direction: DirectionKind = "refusal",
        layer: Optional[int] = None,
        position: str = "last",
        max_layer_fraction: float = 0.8,
        max_kl: float = 0.1,
        selection_every: int = 4,
        max_prompts_per_domain: int = 32,
        batch_size: int = 32,
        export: Export = "none",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, export=export, **kwargs)
        if direction not in ("refusal", "domain"):
            raise ValueError(f"direction: {direction!r}; accepted: refusal, domain")
        if position not in POSITIONS:
            raise ValueError(f"position: {position!r}; accepted: {', '.join(POSITIONS)}")
        if export == "adapter":
            raise ValueError("export: adapter: an ablation trains no adapter; use merged or full (the weight-"
                             "orthogonalised model) or none (the direction file only)")
        if max_kl <= 0:
            raise ValueError(f"max_kl must be > 0, got {max_kl}")
        if direction == "domain" and self.target_domain is None:
            raise ValueError("direction: domain needs data.target_domain (whose direction is ablated)")
        self.direction_kind = direction
        self.layer = layer
        self.position = position
        self.max_layer_fraction = max_layer_fraction
        self.max_kl = max_kl
        self.selection_every = selection_every
        self.max_prompts_per_domain = max_prompts_per_domain
        self.batch_size = batch_size
        self.ablation: Optional[DirectionalAblation] = None
        self.chosen_layer: Optional[int] = None

    @property
    def method(self) -> str:
        return ABLATION_METHODS[("refusal", "domain").index(self.direction_kind)]

    @property
    def ablated(self) -> bool:
        return self.ablation is not None

    def _baseline_pass(self) -> bool:
        return not self.ablated

    def _evaluation_step(self) -> int:
        return 1 if self.ablated else 0

    def _baseline_batches(self) -> Any:
        return -1 if self.trainer.limit_val_batches in (None, 1.0) else self.trainer.limit_val_batches

    def configure_optimizers(self):
        return None

    def on_train_start(self) -> None:
        raise RuntimeError("RefusalAblationModule trains nothing: run it with `ema-lightning ablate` (or `fit`, which "
                           "the CLI runs as an ablation), or call ema_lightning.modules.ablation.run_ablation")

    # ------------------------------------------------------------- the direction
    def fit_direction(self, datamodule) -> torch.Tensor:
        """Find the direction and its layer, install the hooks, write `<log_dir>/ablation/`; returns the direction."""
        records, neutral = cap_prompts(datamodule.train_records, datamodule.neutral_records, self.max_prompts_per_domain)
        groups, selection = prompt_groups(self.direction_kind, self.target_domain, records, neutral, self.selection_every)
        empty = [name for name, prompts in {**groups, **{f"selection {k}": v for k, v in selection.items()}}.items()
                 if not prompts]
        if empty:
            raise ValueError(f"refusal-direction ablation: no {', '.join(empty)} prompts in the train data "
                             f"(data.train and data.neutral; {len(records)} records, selection_every={self.selection_every})")
        system_prompt = datamodule.system_prompt
        prompts = [p for group in groups.values() for p in group]
        acts = capture_activations(self.model, self.tokenizer, prompts, (self.position,), self.batch_size, system_prompt)[self.position]
        parts, start = {}, 0
        for name, group in groups.items():
            parts[name], start = acts[start:start + len(group)], start + len(group)
        candidates = directions(self.direction_kind, parts["harmful"], parts["harmless"], parts.get("target_harmful"),
                                parts.get("target_harmless"))
        n_layers = candidates.shape[0] - 1
        if self.layer is not None and not 0 <= self.layer < n_layers:
            raise ValueError(f"model.init_args.layer={self.layer}: the model's hidden states have indices 0 .. "
                             f"{n_layers - 1} (0 = embeddings; {n_layers} is after the final norm)")
        judge = (self.evaluator.logit_judge or LogitRefusalJudge()).prepare(self.tokenizer)
        layers = [self.layer] if self.layer is not None else candidate_layers(n_layers, self.max_layer_fraction)
        scores = score_layers(self.model, self.tokenizer, candidates, layers, selection["harmful"], selection["harmless"],
                              judge, self.batch_size, system_prompt)
        chosen, passed = (scores[0], scores[0].kl <= self.max_kl) if self.layer is not None else choose_layer(scores, self.max_kl)
        if not passed:
            log.warning("refusal-direction ablation: every candidate layer moves harmless prompts' next-token "
                        "distribution by more than max_kl=%s (KL %s); layer %d has the lowest refusal score",
                        self.max_kl, ", ".join(f"{s.kl:.3f}" for s in scores), chosen.layer)
        self.chosen_layer = chosen.layer
        self.ablation = DirectionalAblation(self.model, candidates[chosen.layer]).install()
        log.info("refusal-direction ablation: %s direction of layer %d (refusal score %.2f, KL %.3f)",
                 self.direction_kind, chosen.layer, chosen.refusal_score, chosen.kl)
        self._log_to_loggers({"ablation/layer": float(chosen.layer), "ablation/refusal_score": chosen.refusal_score,
                              "ablation/kl": chosen.kl}, step=1)
        self._write_direction(candidates, selection_table(scores, chosen.layer), passed,
                              {name: len(group) for name, group in groups.items()},
                              {name: len(group) for name, group in selection.items()})
        return candidates[chosen.layer]

    def _write_direction(self, candidates, table, passed, fit_counts, selection_counts) -> None:
        directory = self.run_dir
        if directory is None or self.global_rank != 0:
            return
        from safetensors.torch import save_file

        folder = directory / "ablation"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"directions": candidates.contiguous(), "direction": candidates[self.chosen_layer].clone()},
                  str(folder / "direction.safetensors"),
                  metadata={"kind": self.direction_kind, "layer": str(self.chosen_layer), "position": self.position})
        (folder / "selection.json").write_text(json.dumps(
            {"kind": self.direction_kind, "target": self.target_domain, "layer": self.chosen_layer, "max_kl": self.max_kl,
             "kl_filter_passed": passed, "direction_prompts": fit_counts, "selection_prompts": selection_counts,
             "candidates": table}, indent=1))

    # ------------------------------------------------------------------ export
    def export_model(self, directory=None):
        """With `export: merged|full`: the model with its stream writers orthogonalised to the direction."""
        directory = Path(directory) if directory is not None else (self.run_dir or Path(".")) / "export"
        if self.export == "none" or self.ablation is None:
            return directory
        if self.device_mesh is not None:
            raise ValueError("export of an ablation under FSDP is not supported; export: none keeps the direction file, "
                             "from which a single-device run exports the model")
        direction = self.ablation.direction
        self.ablation.remove()
        model = self.model.merge_and_unload() if self.uses_lora else self.model
        self.model = orthogonalize_weights(model, direction)
        self.ablation = None  # the weights now do what the hooks did
        export_model(self.model, self.tokenizer, "full", directory, uses_lora=False, random_base=False,
                     rank_zero=self.global_rank == 0)
        return directory


def run_ablation(trainer, module: RefusalAblationModule, datamodule) -> None:
    """The ablation run: the evaluation before (the baseline, reused from a study's cache when there),
    the direction and its layer, the evaluation with the direction ablated, the export."""
    trainer.validate(module, datamodule=datamodule, verbose=False)
    module.fit_direction(datamodule)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    module.export_model()
