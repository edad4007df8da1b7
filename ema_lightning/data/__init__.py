"""Data: validated records, their sources (files, datasets, built-in), set selection, collation and the RefusalDataModule.

`records` and `sources` load with the package (plain Python, no torch); everything else loads on first
use, so reading and checking data files never imports torch, torchmetrics or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from ema_lightning.data.records import Record, RecordError
from ema_lightning.data.sources import LoadReport, RecordSource, load_all, load_records

_LAZY = {
    "SetSelection": "ema_lightning.data.selection",
    "stratified_sample": "ema_lightning.data.selection",
    "with_self_responses": "ema_lightning.data.self_responses",
    "EvalCollator": "ema_lightning.data.collate",
    "TrainCollator": "ema_lightning.data.collate",
    "bucket_by_length": "ema_lightning.data.collate",
    "encode_example": "ema_lightning.data.collate",
    "format_prompt": "ema_lightning.data.collate",
    "left_pad": "ema_lightning.data.collate",
    "prompt_batches": "ema_lightning.data.collate",
    "ResumableTrainSampler": "ema_lightning.data.samplers",
    "ShardedEvalSampler": "ema_lightning.data.samplers",
    "strided_shard": "ema_lightning.data.samplers",
    "Encoding": "ema_lightning.data.datamodule",
    "RefusalDataModule": "ema_lightning.data.datamodule",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ema_lightning.data' has no attribute {name!r}")


__all__ = [
    "Encoding",
    "EvalCollator",
    "LoadReport",
    "Record",
    "RecordError",
    "RecordSource",
    "RefusalDataModule",
    "ResumableTrainSampler",
    "SetSelection",
    "ShardedEvalSampler",
    "TrainCollator",
    "bucket_by_length",
    "encode_example",
    "format_prompt",
    "left_pad",
    "load_all",
    "load_records",
    "prompt_batches",
    "strided_shard",
    "stratified_sample",
    "with_self_responses",
]
