"""Untrusted files given to `ema-lightning extract` (issue 12, items 1, 6 and 19).

A checkpoint is read with `torch.load(weights_only=True)` only: a pickle that would run a command is
refused and the command never runs. A missing, empty, truncated or random file, or one without
trained weights, is one line naming the file. Every argument is checked before the model loads or
anything is written.
"""

from __future__ import annotations

import os
import random
import shlex
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tiny_assets import tiny_qwen2_config

from ema_lightning.checkpoints import CheckpointError

TINY_BACKBONE = {
    "tiny": tiny_qwen2_config(max_position_embeddings=512, tie_word_embeddings=True),
    "tokenizer": "builtin",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
}


class RunsACommand:
    """Unpickling this runs `command` (what a hostile `evil.ckpt` does under `weights_only=False`)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "extract.yaml"
    path.write_text(yaml.safe_dump({"backbone": TINY_BACKBONE}))
    return path


def _extract(tmp_path: Path, *args: str):
    from ema_lightning.concepts.extract import extract_main

    return extract_main(["--config", str(_config(tmp_path)), *args])


def _evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "payload": RunsACommand(f"touch {shlex.quote(str(marker))}")},
               path)
    return path, marker


def test_malicious_checkpoint_is_refused_and_its_command_never_runs(tmp_path, model_loads):
    evil, marker = _evil(tmp_path)
    out = tmp_path / "vectors"
    with pytest.raises(ValueError) as error:
        _extract(tmp_path, "--checkpoint", str(evil), "--output", str(out))
    assert not marker.exists(), "the checkpoint's command ran"
    assert isinstance(error.value, CheckpointError)
    message = str(error.value)
    assert message.startswith(f"{evil}: refused") and ("posix.system" in message or "os.system" in message), message
    assert "\n" not in message
    assert not model_loads and not out.exists()


def _truncated(tmp_path: Path) -> Path:
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"model.w": torch.arange(256.0)}, "global_step": 1}, whole)
    data = whole.read_bytes()
    cut = tmp_path / "epoch=0-step=2.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        return _truncated(tmp_path)
    elif kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    elif kind == "no_state_dict":
        torch.save({"global_step": 3}, path)
    elif kind == "empty_state_dict":
        torch.save({"state_dict": {}, "global_step": 3}, path)
    elif kind == "no_model_weights":
        torch.save({"state_dict": {"encoder.w": torch.zeros(2)}, "global_step": 3}, path)
    return path


BAD = {
    "missing": "no such file",
    "folder": "is a folder",
    "empty": "is empty",
    "truncated": "truncated",
    "random": "not a readable PyTorch checkpoint",
    "not_a_dict": "not a checkpoint dict",
    "no_state_dict": "has no 'state_dict'",
    "empty_state_dict": "'state_dict' is empty",
    "no_model_weights": "no 'model.' weights",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_checkpoint_is_one_line_naming_the_file_before_the_model_loads(tmp_path, model_loads, kind):
    path = _bad_file(tmp_path, kind)
    out = tmp_path / "vectors"
    with pytest.raises(CheckpointError) as error:
        _extract(tmp_path, "--checkpoint", str(path), "--output", str(out))
    message = str(error.value)
    assert message.startswith(f"{path}: ") and BAD[kind] in message, message
    assert "\n" not in message
    assert not model_loads and not out.exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--target", "finance"], ["--target", "finance", "cybersecurity"]),
        (["--position", "first"], ["--position", "first", "last", "mean"]),
        (["--batch_size", "0"], ["--batch_size", "0"]),
        (["--max_prompts_per_domain", "0"], ["--max_prompts_per_domain", "0"]),
    ],
)
def test_bad_argument_fails_before_the_model_loads_or_anything_is_written(tmp_path, model_loads, args, expected):
    out = tmp_path / "vectors"
    with pytest.raises(ValueError) as error:
        _extract(tmp_path, "--output", str(out), *args)
    assert not model_loads and not out.exists()
    for part in expected:
        assert part in str(error.value)


def test_adapter_folder_without_adapter_config_fails_before_the_model_loads(tmp_path, model_loads):
    adapter = tmp_path / "export" / "adapter"
    adapter.mkdir(parents=True)
    out = tmp_path / "vectors"
    with pytest.raises(ValueError, match="adapter_config.json"):
        _extract(tmp_path, "--adapter", str(adapter), "--output", str(out))
    assert not model_loads and not out.exists()


def test_checkpoint_of_a_run_loads_weights_only_and_its_weights_reach_the_model(tmp_path, monkeypatch):
    """A checkpoint shaped like the project's (adapter weights, Lightning keys, the sampler's RNG state,
    the EMA baseline) loads with weights_only=True; its weights and step reach the extraction."""
    import ema_lightning.concepts.extract as extract_module
    from ema_lightning.backbone import load_model
    from ema_lightning.data.samplers import rng_state

    torch.manual_seed(0)
    model = load_model(_backbone())
    adapters = {f"model.{k}": torch.full_like(v, 0.01) for k, v in model.state_dict().items() if "lora_" in k}
    assert adapters
    path = tmp_path / "epoch=0-step=5.ckpt"
    torch.save({"epoch": 0, "global_step": 5, "pytorch-lightning_version": "2.6.0", "state_dict": adapters,
                "loops": {"fit_loop": {"state_dict": {}}}, "ema_baseline": {"cybersecurity": 1.0},
                "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
                "train_loader": {"sampler": {"epoch": 0, "position": 3}, "rng": rng_state()}}, path)
    seen = {}

    def extract(model, tokenizer, records, neutral_records, output, **kwargs):
        seen.update(kwargs, model=model, output=output)
        return "vectors"

    monkeypatch.setattr(extract_module, "extract", extract)
    out = tmp_path / "vectors"
    assert _extract(tmp_path, "--checkpoint", str(path), "--output", str(out), "--target", "cyber") == "vectors"
    assert seen["step"] == 5 and seen["target"] == "cybersecurity" and seen["output"] == str(out)
    loaded = {k: v for k, v in seen["model"].state_dict().items() if "lora_" in k}
    assert loaded.keys() == {k.removeprefix("model.") for k in adapters}
    assert all(torch.all(v == 0.01) for v in loaded.values())


def _backbone():
    from ema_lightning.backbone import Backbone, LoraSettings

    settings = dict(TINY_BACKBONE)
    return Backbone(tiny=settings["tiny"], tokenizer="builtin", lora=LoraSettings(**settings["lora"]))


def test_console_script_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys, model_loads):
    from ema_lightning.cli import run

    missing = tmp_path / "runs" / "last.ckpt"
    monkeypatch.setattr(sys, "argv", ["ema-lightning", "extract", "--config", str(_config(tmp_path)),
                                      "--checkpoint", str(missing), "--output", str(tmp_path / "vectors")])
    monkeypatch.delenv("EMA_LIGHTNING_DEBUG", raising=False)
    assert run() == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ema-lightning: error: {missing}: no such file"
    assert not model_loads
