"""ema_lightning: refusal unlearning, emergent misalignment (EMA), containment and concept vectors."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Loaded on first use: `import ema_lightning.data.records` must not pull in torch through the judges.
_LAZY = {
    "DOMAINS": "ema_lightning.domains",
    "canonical_domain": "ema_lightning.domains",
    "KeywordRefusalJudge": "ema_lightning.evaluation.judges",
    "LearnedRefusalJudge": "ema_lightning.evaluation.learned_judge",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ema_lightning' has no attribute {name!r}")


__all__ = ["DOMAINS", "KeywordRefusalJudge", "LearnedRefusalJudge", "canonical_domain", "__version__"]
