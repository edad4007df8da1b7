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


@pytest.fixture
def model_loads(monkeypatch):
    """Record every model build (the backbone named, or "tiny"): checks that must stop a run before
    any weights load assert this stays empty."""
    import ema_lightning.backbone as backbone
    import ema_lightning.modules.base as base

    calls: list[str] = []
    original = backbone.load_model

    def load_model(b):
        calls.append(str(b.name_or_path or "tiny"))
        return original(b)

    monkeypatch.setattr(backbone, "load_model", load_model)
    monkeypatch.setattr(base, "load_model", load_model)
    return calls
