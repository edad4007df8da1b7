"""Concept vectors: residual-stream capture, difference-of-means vectors per domain and layer, analysis,
the Lightning callback, standalone extraction and the report section."""

from ema_lightning.concepts.analysis import (
    correlation_per_layer,
    cosine_matrix,
    drift,
    early_layers,
    refusal_projection,
    similarity_to_target,
    similarity_vs_drop,
)
from ema_lightning.concepts.capture import capture_activations
from ema_lightning.concepts.vectors import (
    ConceptVectors,
    concept_vectors,
    extract_concept_vectors,
    linear_probe_directions,
    refusal_direction,
    unit,
)

__all__ = [
    "ConceptVectors",
    "capture_activations",
    "concept_vectors",
    "correlation_per_layer",
    "cosine_matrix",
    "drift",
    "early_layers",
    "extract_concept_vectors",
    "linear_probe_directions",
    "refusal_direction",
    "refusal_projection",
    "similarity_to_target",
    "similarity_vs_drop",
    "unit",
]
