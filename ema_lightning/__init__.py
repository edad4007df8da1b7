"""ema_lightning: refusal unlearning, emergent misalignment (EMA), containment and concept vectors."""

from ema_lightning.domains import DOMAINS, canonical_domain

__version__ = "0.1.0"

__all__ = ["DOMAINS", "canonical_domain", "__version__"]
