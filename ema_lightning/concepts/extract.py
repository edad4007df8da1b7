"""Standalone extraction on any model or checkpoint: the work behind `ema-lightning extract`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ema_lightning.concepts import analysis, plots
from ema_lightning.concepts.vectors import ConceptVectors, extract_concept_vectors
from ema_lightning.data.records import Record
from ema_lightning.domains import DOMAINS, canonical_domain


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
        target = canonical_domain(target)
        similarity = analysis.similarity_to_target(vectors.vectors, target)
        plots.plot_similarity_curves(similarity, DOMAINS, target, out / f"similarity_to_{target}.png")
    return vectors


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
