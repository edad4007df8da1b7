"""Checkpoint and export files under faults (issue 12, items 6, 7 and 8).

`--ckpt_path` is checked before Lightning reads it: one line naming the file. A checkpoint save that
fails (disk full, injected) never leaves the target half-written and removes its temporary; an
earlier checkpoint of the same name is intact. An export that fails leaves no `export/` (or the
earlier complete one) and no temporary folder.
"""

from __future__ import annotations

import errno
import io
import random
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tiny_assets import tiny_qwen2, word_level_tokenizer

from ema_lightning.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointSaveError,
    check_checkpoint,
    remove_stale_temporaries,
    temporary_path,
    with_atomic_checkpoint_io,
)

ROOT = Path(__file__).resolve().parents[2]
REAL_SAVE = torch.save


def _checkpoint(step: int = 1) -> dict:
    return {"state_dict": {"model.w": torch.arange(256.0) + step}, "global_step": step}


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ----------------------------------------------------------------------------- --ckpt_path checks (item 6)


def _bad_path(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        REAL_SAVE(_checkpoint(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "no_state_dict":
        REAL_SAVE({"global_step": 1}, path)
    return path


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing", "no such file"),
        ("folder", "folder without meta.pt"),
        ("empty", "is empty"),
        ("truncated", "truncated"),
        ("random", "not a readable PyTorch checkpoint"),
        ("no_state_dict", "has no 'state_dict'"),
    ],
)
def test_check_checkpoint_names_the_file_and_the_problem_on_one_line(tmp_path, kind, expected):
    path = _bad_path(tmp_path, kind)
    with pytest.raises(CheckpointError) as error:
        check_checkpoint(str(path))
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message and error.value.path == str(path)
    assert isinstance(error.value, ValueError)  # `ema-lightning` prints it as one line and exits 2


def test_check_checkpoint_accepts_checkpoints_and_names_lightning_resolves(tmp_path):
    path = tmp_path / "epoch=0-step=1.ckpt"
    REAL_SAVE({**_checkpoint(), "hyper_parameters": {"beta": 0.1}}, path)
    assert check_checkpoint(path)["hyper_parameters"] == {"beta": 0.1}
    for name in (None, "last", "best", "hpc", "registry", "registry:model:v1", "s3://bucket/run/last.ckpt"):
        assert check_checkpoint(name) is None
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    REAL_SAVE({"global_step": 4}, sharded / "meta.pt")
    assert check_checkpoint(sharded)["global_step"] == 4
    (sharded / "meta.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{sharded}: sharded checkpoint: meta.pt is empty")):
        check_checkpoint(sharded)


class RunsACommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_checkpoint_io_never_unpickles_even_when_asked(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    REAL_SAVE({"state_dict": {}, "x": RunsACommand(f"touch '{marker}'")}, evil)
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{evil}: refused")):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{evil}: refused")):
        check_checkpoint(evil)
    assert not marker.exists()


# ----------------------------------------------------------------------------- atomic checkpoint save (item 7)


@pytest.fixture
def disk_full(monkeypatch):
    """`torch.save` writes half of the checkpoint, then fails as a full disk does. Records, at the
    moment of failure, the bytes under every name in the target's folder."""
    seen: dict[str, dict[str, bytes]] = {}

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        REAL_SAVE(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        handle = open(f, "wb") if isinstance(f, (str, Path)) else f
        handle.write(data[: len(data) // 2])
        handle.flush()
        name = Path(handle.name)
        seen["at_failure"] = {p.name: p.read_bytes() for p in name.parent.iterdir() if p.is_file()}
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    return seen


def test_full_disk_keeps_the_earlier_checkpoint_of_that_name_and_leaves_no_temporary(tmp_path, disk_full):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    target = folder / "epoch=0-step=2.ckpt"
    REAL_SAVE(_checkpoint(1), target)
    earlier = target.read_bytes()
    with pytest.raises(CheckpointSaveError) as error:
        AtomicCheckpointIO().save_checkpoint(_checkpoint(2), target)
    assert error.value.errno == errno.ENOSPC and str(error.value).startswith(f"{target}: checkpoint not written")
    assert "intact" in str(error.value)
    assert disk_full["at_failure"][target.name] == earlier  # the real name never held the half-written bytes
    assert target.read_bytes() == earlier and torch.load(target, weights_only=True)["global_step"] == 1
    assert _temporaries(folder) == []


def test_full_disk_on_a_first_save_leaves_no_file_under_the_name(tmp_path, disk_full):
    target = tmp_path / "checkpoints" / "epoch=0-step=2.ckpt"
    with pytest.raises(CheckpointSaveError):
        AtomicCheckpointIO().save_checkpoint(_checkpoint(2), target)
    assert target.name not in disk_full["at_failure"]
    assert sorted(p.name for p in target.parent.iterdir()) == []


def test_save_replaces_the_checkpoint_whole_and_loads_weights_only(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint(_checkpoint(1), target)
    io_plugin.save_checkpoint(_checkpoint(2), target)
    assert io_plugin.load_checkpoint(target)["global_step"] == 2
    assert _temporaries(target.parent) == []


def test_stale_temporaries_of_dead_processes_are_removed_at_the_next_start(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / f"epoch=0-step=2.ckpt.tmp-{_dead_pid()}"
    stale.write_bytes(b"PK\x03\x04half")
    ours = temporary_path(folder / "epoch=0-step=4.ckpt")  # a running process (this one) is writing it
    ours.write_bytes(b"PK\x03\x04")
    keep = folder / "epoch=0-step=1.ckpt"
    keep.write_bytes(b"x")
    other = folder / f"notes.txt.tmp-{_dead_pid()}"  # another target's: kept when one target is named
    other.write_bytes(b"x")
    assert remove_stale_temporaries(folder, "notes.txt.bak") == []
    assert remove_stale_temporaries(folder, "epoch=0-step=2.ckpt") == [stale]
    assert remove_stale_temporaries(folder) == [other]
    assert sorted(p.name for p in folder.iterdir()) == sorted([ours.name, keep.name])
    ours.unlink()

    stale.write_bytes(b"PK\x03\x04half")
    AtomicCheckpointIO().save_checkpoint(_checkpoint(3), folder / "epoch=0-step=3.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=1.ckpt", "epoch=0-step=3.ckpt"]


def test_trainer_with_the_plugin_fails_on_a_full_disk_without_a_partial_checkpoint(tmp_path, monkeypatch):
    """Through Lightning: ModelCheckpoint -> Trainer.save_checkpoint -> the plugin."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    folder = tmp_path / "checkpoints"
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=-1, filename="{step}")],
        plugins=with_atomic_checkpoint_io(None), limit_val_batches=0,
    )
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    calls = []

    def save(obj, f, *args, **kwargs):  # the second checkpoint hits a full disk half-way
        calls.append(1)
        if len(calls) == 1:
            return REAL_SAVE(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04" + b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointSaveError, match=r"step=4\.ckpt: checkpoint not written \(No space left on device\)"):
        trainer.fit(BoringModel())
    assert sorted(p.name for p in folder.iterdir()) == ["step=2.ckpt"]
    assert check_checkpoint(folder / "step=2.ckpt")["global_step"] == 2


def test_with_atomic_checkpoint_io_keeps_a_users_checkpoint_io():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    user = TorchCheckpointIO()
    assert with_atomic_checkpoint_io([user]) == [user]
    assert with_atomic_checkpoint_io(user) == [user]
    added = with_atomic_checkpoint_io(["bf16-mixed"])
    assert added[0] == "bf16-mixed" and isinstance(added[1], AtomicCheckpointIO) and len(added) == 2


CLI_ARGS = ["--config", "configs/tiny_cpu.yaml", "--trainer.enable_progress_bar=false"]


def test_cli_trainer_saves_checkpoints_with_the_atomic_plugin(tmp_path, monkeypatch):
    """Needs cli.py to add the plugin (`with_atomic_checkpoint_io`) in `instantiate_trainer`."""
    from ema_lightning.cli import EMALightningCLI

    monkeypatch.chdir(ROOT)
    cli = EMALightningCLI(args=[*CLI_ARGS, f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.parametrize("subcommand", ["validate", "fit"])
@pytest.mark.parametrize("kind, expected", [("missing", "no such file"), ("truncated", "is truncated")])
def test_cli_bad_ckpt_path_is_one_line_before_the_model_loads(tmp_path, monkeypatch, subcommand, kind, expected):
    """Needs cli.py to call `check_checkpoint` on `--ckpt_path` before the classes are instantiated."""
    import ema_lightning.backbone as backbone
    import ema_lightning.modules.base as base
    from ema_lightning.cli import main

    monkeypatch.chdir(ROOT)
    loads = []
    monkeypatch.setattr(backbone, "load_model", lambda *a, **k: loads.append(1))
    monkeypatch.setattr(base, "load_model", lambda *a, **k: loads.append(1), raising=False)
    path = _bad_path(tmp_path, kind)
    logs = tmp_path / "logs"
    with pytest.raises(CheckpointError) as error:
        main([subcommand, *CLI_ARGS, f"--trainer.logger.init_args.save_dir={logs}", f"--ckpt_path={path}"])
    assert str(error.value).startswith(f"{path}: {expected}") and "\n" not in str(error.value)
    assert not loads and not logs.exists()


# ----------------------------------------------------------------------------- atomic export (item 8)


@pytest.fixture
def lora_model():
    from peft import LoraConfig, get_peft_model

    tokenizer = word_level_tokenizer(["a", "b", "c", "d"])
    model = get_peft_model(tiny_qwen2(len(tokenizer)), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    return model, tokenizer


def _export(model, tokenizer, directory: Path):
    from ema_lightning.export import export_model

    return export_model(model, tokenizer, "adapter", directory, uses_lora=True, random_base=True, rank_zero=True)


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _config_then_full_disk(save_directory, *args, **kwargs):
    """A `save_pretrained` that writes the config, then hits a full disk on the weights."""
    Path(save_directory).mkdir(parents=True, exist_ok=True)
    (Path(save_directory) / "config.json").write_text("{}")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["base", "adapter"])
def test_failed_export_leaves_no_export_folder_and_no_temporary(tmp_path, lora_model, monkeypatch, failing):
    model, tokenizer = lora_model
    module = model.get_base_model() if failing == "base" else model
    monkeypatch.setattr(module, "save_pretrained", _config_then_full_disk)
    run = tmp_path / "version_0"
    run.mkdir()
    with pytest.raises(OSError, match="No space left"):
        _export(model, tokenizer, run / "export")
    assert sorted(p.name for p in run.iterdir()) == []


def test_failed_export_keeps_the_earlier_complete_one(tmp_path, lora_model, monkeypatch):
    model, tokenizer = lora_model
    export = tmp_path / "version_0" / "export"
    _export(model, tokenizer, export)
    earlier = _tree(export)
    assert any(name.startswith("base/") and name.endswith(".safetensors") for name in earlier)
    assert any(name.startswith("adapter/") and name.endswith(".safetensors") for name in earlier)
    base = model.get_base_model()
    monkeypatch.setattr(base, "save_pretrained", _config_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        _export(model, tokenizer, export)
    assert _tree(export) == earlier
    assert sorted(p.name for p in export.parent.iterdir()) == ["export"]


def test_export_replaces_an_earlier_one_whole_and_clears_stale_temporaries(tmp_path, lora_model):
    model, tokenizer = lora_model
    export = tmp_path / "version_0" / "export"
    stale = export.with_name(f"export.tmp-{_dead_pid()}")
    (stale / "base").mkdir(parents=True)
    (stale / "base" / "config.json").write_text("{}")
    (export / "old").mkdir(parents=True)
    _export(model, tokenizer, export)
    assert sorted(p.name for p in export.iterdir()) == ["adapter", "base"]
    assert sorted(p.name for p in export.parent.iterdir()) == ["export"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(export / "base"), export / "adapter")
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
