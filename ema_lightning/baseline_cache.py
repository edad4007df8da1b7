"""Reuse the step-0 measurements of runs that start from the same base.

The runs of a study share one base model and one eval set and start with a fresh LoRA adapter, whose
B matrices are zero, so the model *is* its base: their baseline evaluation and their step-0 concept
vectors are the same computation, eight times over. With `baseline_cache` set, a run looks each one
up under a key of everything it depends on (the base's files, the prompts, the settings that shape
the measurement, the package's own code) and stores it on a miss. `ema-lightning study` sets it for
its runs.

Nothing is reused for a tiny random-init backbone, a full fine-tune, or an adapter that is not fresh
(resumed, loaded, or initialised away from zero): those are measured every time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import torch

from ema_lightning.backbone import Backbone, resolve_sources


def base_fingerprint(backbone: Backbone) -> Optional[dict[str, Any]]:
    """What the base model's outputs depend on: its settings (LoRA aside) and, for local folders,
    the name, size and modification time of every file in it; None for random-init (tiny) models."""
    if backbone.tiny is not None:
        return None
    b = resolve_sources(backbone)
    fingerprint: dict[str, Any] = {k: v for k, v in dataclasses.asdict(b).items() if k != "lora"}
    for field in ("name_or_path", "tokenizer"):
        value = getattr(b, field)
        path = Path(value) if value else None
        if path is not None and path.is_dir():
            fingerprint[f"{field}_files"] = [
                (str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                for f in sorted(path.rglob("*")) if f.is_file()
            ]
    return fingerprint


def is_fresh_adapter(model: torch.nn.Module) -> bool:
    """True when the model has LoRA adapters and every B matrix is zero (it computes its base).

    Under FSDP2 this looks at the local shards; callers reduce the decision over ranks.
    """
    found = False
    for name, param in model.named_parameters():
        if "lora_B" in name or "lora_embedding_B" in name:
            found = True
            local = param.to_local() if hasattr(param, "to_local") else param
            if bool(local.detach().any()):
                return False
    return found


def spec(obj: Any) -> dict[str, Any] | None:
    """A JSON-able description of a judge (its class and public settings) for cache keys."""
    if obj is None:
        return None
    return {"class": type(obj).__qualname__, **{k: v for k, v in vars(obj).items() if not k.startswith("_")}}


def cache_key(**parts: Any) -> str:
    """A stable hex digest of `parts` (JSON, sorted keys; other objects by repr) and of the package's
    source code, so that a changed judge, generation or capture never reuses an old measurement."""
    text = json.dumps({**parts, "ema_lightning": package_digest()}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def package_digest() -> str:
    """sha256 of every Python file and asset of the installed `ema_lightning` package."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".jsonl", ".json", ".yaml")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def record_keys(records) -> list[tuple[str, str, bool]]:
    """The part of eval records a measurement depends on: prompt, domain, harmful."""
    return [(r.prompt, r.domain, bool(r.harmful)) for r in records]
