"""Evaluation: refusal judges, the per-domain metric, batched generation and the Evaluator that joins them.

Names are imported on first use, so `import ema_lightning.evaluation.judges` does not load torchmetrics.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClassifierRefusalJudge": "judges",
    "KeywordRefusalJudge": "judges",
    "LogitRefusalJudge": "judges",
    "PrefixRefusalJudge": "judges",
    "RefusalJudge": "judges",
    "SubstringRefusalJudge": "judges",
    "LearnedRefusalJudge": "learned_judge",
    "GenerativeJudge": "generative_judges",
    "JudgeZooJudge": "generative_judges",
    "Verdict": "generative_judges",
    "DegenerateDetector": "coherence",
    "DomainMean": "metrics",
    "DomainRefusalRate": "metrics",
    "TokenMean": "metrics",
    "as_dict": "metrics",
    "ema_score": "metrics",
    "refusal_drop": "metrics",
    "generate": "generation",
    "Evaluator": "evaluator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"ema_lightning.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ema_lightning.evaluation' has no attribute {name!r}")
