"""The model's own forget responses (`forget_responses: generate`), generated once and cached as JSONL."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from ema_lightning.data.records import Record, RecordError

log = logging.getLogger(__name__)

SELF_RESPONSES_FILE = "self_responses.jsonl"
"""File name of the cache in the run's log directory: one `{"prompt": ..., "response": ...}` per line."""


def read_self_responses(path: Path) -> dict[str, str]:
    """prompt -> response of the cache at `path` (empty when absent); RecordError naming file and line on a bad line."""
    cache: dict[str, str] = {}
    if not path.is_file():
        return cache
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                try:
                    row = json.loads(text)
                    cache[row["prompt"]] = row["response"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise RecordError(str(path), number, "prompt/response", "invalid cache line", "delete the file to regenerate") from None
    return cache


def write_self_responses(path: Path, cache: Mapping[str, str]) -> None:
    """Write the cache (creating its folder), one JSON line per prompt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for prompt, response in cache.items():
            handle.write(json.dumps({"prompt": prompt, "response": response}, ensure_ascii=False) + "\n")


def with_self_responses(
    records: Sequence[Record],
    path: Path,
    generate_responses: Callable[[list[str]], list[str]],
    is_global_zero: bool = True,
    barrier: Callable[[], None] | None = None,
) -> list[Record]:
    """`records` with the model's own responses: read from the cache at `path`, the missing ones
    generated with `generate_responses(prompts)` (every rank calls it) and the cache rewritten by rank 0.

    After a write every rank waits at `barrier`, so no rank reads a half-written cache on a later call.
    """
    cache = read_self_responses(path)
    missing = list(dict.fromkeys(r.prompt for r in records if r.prompt not in cache))
    if missing:
        log.info("generating the model's own responses for %d forget prompts (%d cached in %s)", len(missing), len(cache), path)
        responses = generate_responses(missing)
        if len(responses) != len(missing):
            raise RuntimeError(f"generate_responses returned {len(responses)} responses for {len(missing)} prompts")
        cache.update(zip(missing, responses))
        if is_global_zero:
            write_self_responses(path, cache)
        if barrier is not None:
            barrier()
    else:
        log.info("reusing the model's own forget responses from %s", path)
    return [replace(r, response=cache[r.prompt]) for r in records]
