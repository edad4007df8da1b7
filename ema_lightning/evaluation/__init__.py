"""Evaluation: refusal judges, the seven-domain refusal metric, batched generation."""

from ema_lightning.evaluation.generation import bucket_by_length, generate
from ema_lightning.evaluation.judges import (
    ClassifierRefusalJudge,
    KeywordRefusalJudge,
    LogitRefusalJudge,
    RefusalJudge,
    SubstringRefusalJudge,
)
from ema_lightning.evaluation.metrics import DomainRefusalRate, as_dict, ema_score, refusal_drop

__all__ = [
    "ClassifierRefusalJudge",
    "DomainRefusalRate",
    "KeywordRefusalJudge",
    "LogitRefusalJudge",
    "RefusalJudge",
    "SubstringRefusalJudge",
    "as_dict",
    "bucket_by_length",
    "ema_score",
    "generate",
    "refusal_drop",
]
