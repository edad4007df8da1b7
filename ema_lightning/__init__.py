"""ema_lightning: refusal unlearning, emergent misalignment (EMA), containment and concept vectors."""

from ema_lightning.domains import DOMAINS, canonical_domain
from ema_lightning.evaluation.judges import KeywordRefusalJudge

__version__ = "0.1.0"

__all__ = ["DOMAINS", "KeywordRefusalJudge", "canonical_domain", "__version__"]
