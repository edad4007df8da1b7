"""Reuse the step-0 measurements of runs that start from the same base.

The runs of a study share one base model and one eval set and start with a fresh LoRA adapter, whose
B matrices are zero, so the model *is* its base: their baseline evaluation and their step-0 concept
vectors are the same computation, eight times over. With `baseline_cache` set, a run looks each one
up under a key of everything it depends on (the base's files, the prompts, the settings that shape
the measurement, the package's own code) and stores it on a miss. `ema-lightning study` sets it for
its runs.

Nothing is reused for a tiny random-init backbone, a full fine-tune, or an adapter that is not fresh
(resumed, loaded, or initialised away from zero): those are measured every time.

`BaselineCache` is the object a `CausalLMModule` holds (its `baseline_cache` argument) and the
`ConceptVectorCallback` asks for its step-0 vectors; the functions below are its parts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ema_lightning.backbone import Backbone, resolve_sources
from ema_lightning.checkpoints import atomic_file
from ema_lightning.results import Evaluation

log = logging.getLogger(__name__)


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


def may_share_baseline(backbone: Backbone) -> bool:
    """Whether runs on `backbone` can share a cached step-0 measurement, as far as their config tells: a
    file-backed base with fresh LoRA adapters (no tiny random init, no full fine-tune, no loaded
    adapter). `BaselineCache.key` decides at run time (a resumed run, for instance, is measured)."""
    return backbone.tiny is None and backbone.lora is not None and backbone.adapter is None


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


def loader_keys(loaders) -> list[dict[str, Any]]:
    """What an evaluation over these eval DataLoaders depends on: every encoded prompt (token ids,
    domain, harmful; so tokenizer, chat template and truncation count too) and the batch size."""
    if loaders is None:
        return []
    keys = []
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        dataset = loader.dataset
        rows = [dataset[i] for i in range(len(dataset))]
        keys.append({"batch_size": loader.batch_size,
                     "prompts": [(list(r["input_ids"]), int(r["domain_id"]), bool(r["harmful"])) for r in rows]})
    return keys


class BaselineCache:
    """Step-0 measurements of fresh adapters on a file-backed base, stored in `directory` by key.

    `key` is collective under DDP/FSDP (every rank calls it); `load_evaluation` reads on rank 0 and
    broadcasts; stores happen on rank 0 only.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def key(self, kind: str, backbone: Backbone, model: torch.nn.Module, trainer, **parts: Any) -> Optional[str]:
        """Key of a step-0 measurement of `model`, or None when it must be measured: past step 0, a
        random-init base, or a model that is not its base (not a fresh adapter on some rank)."""
        if model is None or trainer.global_step != 0:
            return None
        fingerprint = base_fingerprint(backbone)
        fresh = fingerprint is not None and is_fresh_adapter(model)
        if not trainer.strategy.reduce_boolean_decision(fresh, all=True):
            return None
        return cache_key(kind=kind, base=fingerprint, precision=str(trainer.precision), **parts)

    def evaluation_file(self, key: str) -> Path:
        return self.directory / f"evaluation-{key}.json"

    def concepts_file(self, key: str) -> Path:
        return self.directory / f"concepts-{key}.safetensors"

    def load_evaluation(self, key: str, trainer, wait_s: float = 3600.0) -> Optional[Evaluation]:
        """The stored evaluation of `key`, or None when this run is to measure it. While another
        process measures it (a study's runs side by side), wait for its result instead of measuring the
        same thing twice; a lock whose process is gone, or `wait_s` without a result, and this run measures."""
        entry = self._wait_or_claim(key, wait_s) if trainer.is_global_zero else None
        entry = trainer.strategy.broadcast(entry)
        return Evaluation.from_dict(entry) if entry is not None else None

    def lock_file(self, key: str) -> Path:
        return self.directory / f"evaluation-{key}.lock"

    def _wait_or_claim(self, key: str, wait_s: float) -> Optional[dict]:
        path, lock = self.evaluation_file(key), self.lock_file(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline, waited = time.monotonic() + wait_s, False
        while True:
            if path.is_file():
                return json.loads(path.read_text())
            try:
                with open(lock, "x") as handle:  # atomic: one process claims the measurement
                    handle.write(str(os.getpid()))
                return None
            except FileExistsError:
                pass
            if not _alive(lock) or time.monotonic() > deadline:
                lock.unlink(missing_ok=True)  # its process died (or never stored): measure here
                continue
            if not waited:
                log.info("baseline evaluation being measured by another run (%s): waiting for it", lock)
                waited = True
            time.sleep(1.0)

    def store_evaluation(self, key: str, evaluation: Evaluation, trainer) -> None:
        if trainer.is_global_zero:
            path = self.evaluation_file(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as handle:  # a concurrent reader sees the whole file or none
                handle.write(json.dumps(evaluation.to_dict(), indent=1).encode())
            self.lock_file(key).unlink(missing_ok=True)


def _alive(lock: Path) -> bool:
    """Whether another process that still runs holds `lock` (its pid is the file's text); a lock of this
    process (a measurement it claimed and never stored) is not held. True while the file is being written."""
    try:
        pid = int(lock.read_text())
    except (OSError, ValueError):
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
