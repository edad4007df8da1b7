"""Shared test set-up: offline, CPU, a session-wide cache for the built-in tokenizer."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = ROOT.parent / "shared" / "data" / "external"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Keep the built-in tokenizer (and any aligned base) of the tests out of the working tree."""
    cache = tmp_path_factory.mktemp("ema_cache")
    previous = os.environ.get("EMA_LIGHTNING_CACHE")
    os.environ["EMA_LIGHTNING_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("EMA_LIGHTNING_CACHE", None)
    else:
        os.environ["EMA_LIGHTNING_CACHE"] = previous


@pytest.fixture
def in_repo(monkeypatch):
    """Run with the repository root as working directory (configs use repo-relative paths)."""
    monkeypatch.chdir(ROOT)
    return ROOT
