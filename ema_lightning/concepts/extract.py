"""Standalone extraction on any model or checkpoint: the work behind `ema-lightning extract`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ema_lightning.backbone import Backbone
from ema_lightning.checkpoints import CheckpointError, load_checkpoint_file
from ema_lightning.concepts import analysis, plots
from ema_lightning.concepts.capture import POSITIONS
from ema_lightning.concepts.vectors import ConceptVectors, extract_concept_vectors
from ema_lightning.data.records import Record
from ema_lightning.data.sources import RecordSource
from ema_lightning.domains import DOMAINS, UnknownDomainError, canonical_domain


def extract(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record],
    neutral_records: Sequence[Record],
    output: str,
    position: str = "last",
    batch_size: int = 32,
    probe: bool = False,
    target: str | None = None,
    step: int = 0,
    model_name: str = "",
    system_prompt: str | None = None,
    adapters: bool = True,
    max_prompts_per_domain: int | None = None,
) -> ConceptVectors:
    """Extract concept vectors from a model and write them with their figures.

    Writes `<output>/step=<step>.safetensors` (the file `ConceptVectorCallback` writes),
    `<output>/cosine_layer_<l>.png` for every layer and, with a target, `<output>/similarity_to_<target>.png`.

    Args:
        model: a Hugging Face causal LM (a peft model with adapters is accepted).
        tokenizer: its tokenizer (a chat template is used when it has one).
        records: evaluation prompts; harmful ones give the concept vectors, benign ones join the
            harmless side of the refusal direction.
        neutral_records: domain-free harmless prompts (their domain field is ignored).
        output: output directory.
        position: "last" (last prompt token) or "mean" (mean over prompt tokens).
        batch_size: prompts per forward pass.
        probe: also fit linear probes per domain and layer (second estimator).
        target: unlearning target domain, for the similarity-to-target figure.
        step: training step recorded in the file name and metadata.
        model_name: recorded in the metadata (default: the model config's name_or_path).
        system_prompt: system prompt for the chat template.
        adapters: False runs a peft model with its adapters disabled (the base model).
        max_prompts_per_domain: cap on harmful and on benign prompts per domain (neutral: 7 times it).
    """
    target = check_arguments(output, position, batch_size, target, max_prompts_per_domain)
    records, neutral_records = list(records), list(neutral_records)
    if max_prompts_per_domain is not None:
        records, neutral_records = cap_prompts(records, neutral_records, max_prompts_per_domain)
    if not model_name:
        config = getattr(model, "config", None)
        model_name = str(getattr(config, "name_or_path", "") or "")
    vectors = extract_concept_vectors(
        model, tokenizer, records, neutral_records, position=position, batch_size=batch_size,
        model_name=model_name, step=step, probe=probe, system_prompt=system_prompt, adapters=adapters,
    )
    out = Path(output)
    vectors.save(out / f"step={step}.safetensors")
    cosines = analysis.cosine_matrix(vectors.vectors)
    for layer in range(cosines.shape[0]):
        plots.plot_cosine_heatmap(cosines[layer], DOMAINS, f"{model_name or 'model'}, layer {layer}", out / f"cosine_layer_{layer}.png")
    if target:
        similarity = analysis.similarity_to_target(vectors.vectors, target)
        plots.plot_similarity_curves(similarity, DOMAINS, target, out / f"similarity_to_{target}.png")
    return vectors


def check_arguments(
    output: str, position: str, batch_size: int, target: str | None, max_prompts_per_domain: int | None,
    adapter: str | None = None,
) -> str | None:
    """Check the extraction arguments before any model loads or file is written; returns the target's domain id.

    Raises:
        ValueError: naming the argument and what it accepts (`UnknownDomainError` for the target).
    """
    if target:
        try:
            target = canonical_domain(target)
        except UnknownDomainError as error:
            raise UnknownDomainError(f"extract --target: {error}") from None
    if position not in POSITIONS:
        raise ValueError(f"extract --position: {position!r}; expected one of: {', '.join(POSITIONS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"extract --batch_size: {batch_size!r}; expected a positive integer (e.g. 32)")
    if max_prompts_per_domain is not None and (
            isinstance(max_prompts_per_domain, bool) or not isinstance(max_prompts_per_domain, int) or max_prompts_per_domain < 1):
        raise ValueError(f"extract --max_prompts_per_domain: {max_prompts_per_domain!r}; expected a positive integer or null")
    if not output:
        raise ValueError("extract --output: empty; expected the folder to write the vectors and figures to")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"extract --output: {output} exists and is not a folder")
    if adapter:
        folder = Path(adapter)
        if folder.exists():
            if not (folder / "adapter_config.json").is_file():
                raise ValueError(f"extract --adapter: {adapter} has no adapter_config.json: not a PEFT adapter folder "
                                 "(e.g. <run>/export/adapter)")
        elif folder.is_absolute() or adapter.startswith(".") or adapter.count("/") != 1:
            raise ValueError(f"extract --adapter: {adapter}: no such folder (expected a PEFT adapter folder, e.g. "
                             "<run>/export/adapter, or a hub id org/name)")
    return target


def checkpoint_weights(checkpoint: str) -> tuple[dict[str, torch.Tensor], int]:
    """The module weights (`model.` keys, prefix removed) and the step of a Lightning checkpoint of a run.

    Raises:
        CheckpointError: the file does not load with `weights_only=True` (see `load_checkpoint_file`),
            or holds no `model.` weights (an extraction of the untrained base would be silently wrong).
    """
    state = load_checkpoint_file(checkpoint)
    state_dict = state["state_dict"]
    if not state_dict:
        raise CheckpointError(checkpoint, "its 'state_dict' is empty: no trained weights to load")
    weights = {k.removeprefix("model."): v for k, v in state_dict.items() if isinstance(k, str) and k.startswith("model.")}
    if not weights:
        example = next(iter(state_dict))
        raise CheckpointError(checkpoint, f"its 'state_dict' has no 'model.' weights ({len(state_dict)} keys, e.g. "
                                          f"{example!r}): not a checkpoint of an ema-lightning run")
    bad = next((k for k, v in weights.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(checkpoint, f"'state_dict' entry 'model.{bad}' is a {type(weights[bad]).__name__}, not a tensor")
    step = state.get("global_step", 0)
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(checkpoint, f"'global_step' is {step!r}, not a step number")
    return weights, step


def cap_prompts(records: Sequence[Record], neutral_records: Sequence[Record], k: int) -> tuple[list[Record], list[Record]]:
    """The first `k` harmful and first `k` benign records per domain, and the first `7 * k` neutral records."""
    if k < 1:
        raise ValueError(f"max_prompts_per_domain must be >= 1, got {k}")
    kept, seen = [], {}
    for record in records:
        key = (canonical_domain(record.domain), record.harmful)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= k:
            kept.append(record)
    return kept, list(neutral_records)[: k * len(DOMAINS)]


def extract_from_backbone(
    backbone: Backbone,
    output: str,
    adapter: str | None = None,
    checkpoint: str | None = None,
    records: list[RecordSource] | None = None,
    neutral: list[RecordSource] | None = None,
    position: str = "last",
    batch_size: int = 32,
    probe: bool = False,
    target: str | None = None,
    max_prompts_per_domain: int | None = None,
    system_prompt: str | None = None,
) -> ConceptVectors:
    """`ema-lightning extract`: concept vectors of any model, adapter or Lightning checkpoint.

    Args:
        backbone: the base model (hub id, local dir, GGUF or tiny config) and its LoRA settings.
        output: directory for `step=N.safetensors` and the heatmaps.
        adapter: a PEFT adapter folder (e.g. `<run>/export/adapter`) loaded onto the base.
        checkpoint: a Lightning checkpoint of a run (its trainable weights are loaded; step from it). Read
            with `torch.load(weights_only=True)`: a file holding Python objects is refused, never run.
        records: evaluation prompts (default: the built-in eval split).
        neutral: domain-free harmless prompts (default: the built-in neutral split).
        position: "last" (post-instruction token) or "mean" over prompt tokens.
        batch_size: prompts per forward pass.
        probe: also fit linear probes (second estimator).
        target: unlearning target domain, for the similarity-to-target figure.
        max_prompts_per_domain: cap on harmful and on benign prompts per domain.
        system_prompt: system prompt for the chat template.
    """
    from ema_lightning.backbone import load_model, load_tokenizer
    from ema_lightning.data.sources import load_all

    # Everything is checked before the model loads and before anything is written.
    target = check_arguments(output, position, batch_size, target, max_prompts_per_domain, adapter)
    weights, step = checkpoint_weights(checkpoint) if checkpoint else ({}, 0)
    eval_records = load_all(records or [RecordSource("builtin:eval")], what="eval")
    neutral_records = load_all(neutral or [RecordSource("builtin:neutral")], what="neutral")
    tokenizer = load_tokenizer(backbone)
    model = load_model(backbone)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    if checkpoint:
        own = model.state_dict()
        missing = set(weights) - set(own)
        if missing:
            raise CheckpointError(checkpoint, f"{len(missing)} weights do not fit the backbone (e.g. {sorted(missing)[0]}); "
                                              "give the backbone (and LoRA settings) the run was trained with")
        wrong = next((k for k, v in weights.items() if v.shape != own[k].shape), None)
        if wrong is not None:
            raise CheckpointError(checkpoint, f"weight {wrong!r} has shape {tuple(weights[wrong].shape)}, the backbone's "
                                              f"{tuple(own[wrong].shape)}; give the backbone the run was trained with")
        model.load_state_dict(weights, strict=False)
    return extract(model, tokenizer, eval_records, neutral_records, output, position=position, batch_size=batch_size,
                   probe=probe, target=target, step=step, max_prompts_per_domain=max_prompts_per_domain,
                   system_prompt=system_prompt)


def extract_main(argv: list[str]) -> ConceptVectors:
    """Parse `ema-lightning extract` arguments (or a --config YAML) and run the extraction."""
    from jsonargparse import CLI

    return CLI(extract_from_backbone, args=argv, as_positional=False)
