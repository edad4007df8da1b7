"""ConceptVectorCallback: concept vectors at train start (the baseline) and at every checkpoint."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from ema_lightning.baseline_cache import record_keys
from ema_lightning.concepts import analysis
from ema_lightning.concepts.extract import cap_prompts
from ema_lightning.concepts.vectors import ConceptVectors, extract_concept_vectors
from ema_lightning.domains import DOMAINS
from ema_lightning.modules.base import CausalLMModule

log = logging.getLogger(__name__)


class ConceptVectorCallback(pl.Callback):
    """Extract concept vectors at train start and whenever a checkpoint is saved; log them to TensorBoard.

    Works with a `CausalLMModule` (its model, tokenizer, target domain and baseline cache).

    Writes `<log_dir>/<dirname>/step=N.safetensors` (rank 0; every rank takes part in the capture).
    Prompts come from `trainer.datamodule.eval_records` (harmful per domain; benign ones join the
    harmless side of the refusal direction) and `trainer.datamodule.neutral_records`. The hook is
    `on_save_checkpoint`, which Lightning calls on every rank for every full checkpoint save (whichever
    callback triggers it); weights-only saves are caught at the next batch start (same weights, same
    step), and `on_train_end` adds the final step when no checkpoint was saved there.
    """

    def __init__(
        self,
        position: str = "last",
        batch_size: int = 32,
        probe: bool = False,
        every_n_checkpoints: int = 1,
        dirname: str = "concept_vectors",
        max_prompts_per_domain: int | None = None,
        images: bool = True,
    ) -> None:
        """
        Args:
            position: token position of the activations: "last" (post-instruction token) or "mean".
            batch_size: prompts per forward pass.
            probe: also fit linear probes (second estimator, saved as `probe_vectors`).
            every_n_checkpoints: extract at every n-th checkpoint step (the final step always).
            dirname: folder under the trainer's log dir for the safetensors files.
            max_prompts_per_domain: cap on harmful and on benign prompts per domain (neutral: 7 times it).
            images: also draw each extraction's cosine heatmaps and similarity curves into TensorBoard
                (about 0.4 s a figure on a CPU); the scalars (similarity, drift, projection) are logged always.
        """
        super().__init__()
        if every_n_checkpoints < 1:
            raise ValueError(f"ConceptVectorCallback: every_n_checkpoints must be >= 1, got {every_n_checkpoints}")
        self.position = position
        self.batch_size = batch_size
        self.probe = probe
        self.every_n_checkpoints = every_n_checkpoints
        self.dirname = dirname
        self.images = images
        self.max_prompts_per_domain = max_prompts_per_domain
        self.baseline: ConceptVectors | None = None
        self.history: dict[int, ConceptVectors] = {}
        self._checkpoint_steps: set[int] = set()
        self._checkpoint_paths: tuple = ()
        self._output_dir: Path | None = None
        self.extract_seconds = 0.0
        """Wall time spent by this callback (capture, files, figures) during the last fit: the study's cost figure."""

    # Lightning hooks --------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.baseline, self.history, self._checkpoint_steps, self.extract_seconds = None, {}, set(), 0.0  # a fresh fit, a fresh baseline
        self._saved_since_last_look(trainer)  # what a resumed run's checkpoint callbacks already hold
        # trainer.log_dir broadcasts under DDP, so every rank resolves it here, together.
        self._output_dir = Path(trainer.log_dir or trainer.default_root_dir) / self.dirname
        baseline_file = self._output_dir / "step=0.safetensors"
        if trainer.global_step > 0 and baseline_file.exists():  # resumed run: keep the original baseline
            self.baseline = ConceptVectors.load(baseline_file)
            self.history[0] = self.baseline
            return
        self._extract(trainer, pl_module, reuse=True)  # the first extraction is the baseline

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._checkpoint_saved(trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        # Weights-only checkpoints skip callbacks' on_save_checkpoint; catch them before the next optimizer step.
        if self._saved_since_last_look(trainer):
            self._checkpoint_saved(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._output_dir is None:
            return
        if self._saved_since_last_look(trainer):
            self._checkpoint_saved(trainer, pl_module)
        if trainer.global_step not in self.history:  # the final weights, checkpointed or not
            self._extract(trainer, pl_module)

    def _saved_since_last_look(self, trainer: pl.Trainer) -> bool:
        """Whether a ModelCheckpoint wrote a file since the last call, read from its public paths (the
        same on every rank: ModelCheckpoint broadcasts them)."""
        seen = tuple((c.last_model_path, c.best_model_path, tuple(sorted(c.best_k_models)))
                     for c in trainer.checkpoint_callbacks)
        changed, self._checkpoint_paths = seen != self._checkpoint_paths, seen
        return changed and trainer.global_step > 0

    def _checkpoint_saved(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if self._output_dir is None or step in self._checkpoint_steps:
            return  # before training, or a second checkpoint callback saving at the same step
        self._checkpoint_steps.add(step)
        if (len(self._checkpoint_steps) - 1) % self.every_n_checkpoints == 0 and step not in self.history:
            self._extract(trainer, pl_module)

    # Work ---------------------------------------------------------------------------------------------

    def _extract(self, trainer: pl.Trainer, pl_module: CausalLMModule, reuse: bool = False) -> ConceptVectors:
        """Capture (or, with `reuse`, take from the module's baseline cache), save and log the vectors."""
        start = time.perf_counter()
        records, neutral = self._prompts(trainer)
        cached = self._cache_file(trainer, pl_module, records, neutral) if reuse else None
        vectors = None
        if cached is not None:
            vectors = trainer.strategy.broadcast(
                ConceptVectors.load(cached) if trainer.is_global_zero and cached.is_file() else None)
        if vectors is None:
            with trainer.precision_plugin.forward_context():  # as the run computes (bf16 autocast, ...)
                vectors = extract_concept_vectors(
                    pl_module.model, pl_module.tokenizer, records, neutral, position=self.position,
                    batch_size=self.batch_size, model_name=_model_name(pl_module.model), step=trainer.global_step,
                    probe=self.probe)
            if cached is not None and trainer.is_global_zero:
                vectors.save(cached)
        else:
            log.info("concept vectors at step %d reused from %s", vectors.step, cached)
        self.history[vectors.step] = vectors
        if self.baseline is None:
            self.baseline = vectors
        if trainer.is_global_zero:
            path = vectors.save(self._output_dir / f"step={vectors.step}.safetensors")
            log.info("concept vectors at step %d written to %s", vectors.step, path)
            self._log(trainer, vectors, pl_module.target_domain)
        self.extract_seconds += time.perf_counter() - start  # capture, file and figures: the callback's whole cost
        return vectors

    def _cache_file(self, trainer: pl.Trainer, pl_module: CausalLMModule, records: list, neutral: list) -> Path | None:
        """Where the module's baseline cache keeps these step-0 vectors; None when they must be measured."""
        cache = pl_module.baseline_cache
        if cache is None:
            return None
        key = cache.key("concepts", pl_module.backbone, pl_module.model, trainer, records=record_keys(records),
                        neutral=record_keys(neutral), position=self.position, probe=self.probe)
        return cache.concepts_file(key) if key else None

    def _prompts(self, trainer: pl.Trainer) -> tuple[list, list]:
        datamodule = trainer.datamodule
        missing = [a for a in ("eval_records", "neutral_records") if not getattr(datamodule, a, None)]
        if missing:
            raise RuntimeError(
                f"ConceptVectorCallback: trainer.datamodule has no {' / '.join(missing)}; "
                "it needs a datamodule exposing eval_records (harmful and benign prompts) and neutral_records"
            )
        records, neutral = list(datamodule.eval_records), list(datamodule.neutral_records)
        if self.max_prompts_per_domain is None:
            return records, neutral
        return cap_prompts(records, neutral, self.max_prompts_per_domain)


    def _log(self, trainer: pl.Trainer, vectors: ConceptVectors, target: str | None) -> None:
        writers = [lg.experiment for lg in trainer.loggers if _is_summary_writer(getattr(lg, "experiment", None))]
        if not writers:
            return
        from ema_lightning.concepts import plots

        step, n_layers = vectors.step, vectors.vectors.shape[1]
        images, scalars = {}, {}
        cosines = analysis.cosine_matrix(vectors.vectors)
        for layer in range(n_layers) if self.images else ():
            fig = plots.cosine_heatmap_figure(cosines[layer], DOMAINS, f"step {step}, layer {layer}")
            images[f"concepts/cosine/layer_{layer}"] = plots.figure_to_rgb(fig)
        if target is not None:
            similarity = analysis.similarity_to_target(vectors.vectors, target)
            if self.images:
                fig = plots.similarity_curves_figure(similarity, DOMAINS, target, f"step {step}")
                images[f"concepts/similarity_to_{target}"] = plots.figure_to_rgb(fig)
            early = list(analysis.early_layers(n_layers))
            for i, domain in enumerate(DOMAINS):
                if domain != target:
                    scalars[f"concepts/similarity_to_{target}/{domain}"] = similarity[i, early].mean()
        if self.baseline is not None:
            drift = analysis.drift(vectors.vectors, self.baseline.vectors).mean(dim=1)
            scalars.update({f"concepts/drift/{d}": drift[i] for i, d in enumerate(DOMAINS)})
        middle = n_layers // 2
        projection = analysis.refusal_projection(vectors.vectors, vectors.refusal_direction)[:, middle]
        scalars.update({f"concepts/refusal_projection/{d}": projection[i] for i, d in enumerate(DOMAINS)})
        for writer in writers:
            for tag, image in images.items():
                writer.add_image(tag, image, global_step=step, dataformats="HWC")
            for tag, value in scalars.items():
                if torch.isfinite(value):
                    writer.add_scalar(tag, float(value), global_step=step)
            writer.flush()


def _is_summary_writer(experiment) -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    return isinstance(experiment, SummaryWriter)


def _model_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "name_or_path", "") or getattr(config, "model_type", "") or type(model).__name__)
