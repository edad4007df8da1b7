"""Data: validated records, their sources (files, datasets, built-in), collation and the RefusalDataModule."""

from __future__ import annotations

from typing import Any

from ema_lightning.data.records import Record, RecordError
from ema_lightning.data.sources import LoadReport, RecordSource, load_all, load_records

# torch / lightning are imported only when these are asked for, so reading records stays light.
_LAZY = {
    "RefusalDataModule": "ema_lightning.data.datamodule",
    "ShardedEvalSampler": "ema_lightning.data.datamodule",
    "EvalCollator": "ema_lightning.data.collate",
    "TrainCollator": "ema_lightning.data.collate",
    "encode_example": "ema_lightning.data.collate",
    "format_prompt": "ema_lightning.data.collate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ema_lightning.data' has no attribute {name!r}")


__all__ = [
    "EvalCollator",
    "LoadReport",
    "Record",
    "RecordError",
    "RecordSource",
    "RefusalDataModule",
    "ShardedEvalSampler",
    "TrainCollator",
    "encode_example",
    "format_prompt",
    "load_all",
    "load_records",
]
