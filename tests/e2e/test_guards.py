"""Guards through the real CLI: a NaN loss stops a fit naming term and step and keeps the last good
checkpoint; invalid config values fail before the model loads (or, for LoRA target names, which need the
architecture, before any training step)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
POISON_STEP = 3


class PoisonAdapters(pl.Callback):
    """Fill every LoRA weight with NaN at the start of step `step` (after `step` good steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for name, parameter in pl_module.named_parameters():
                    if "lora_" in name:
                        parameter.fill_(float("nan"))


def _fit_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", "configs/tiny_cpu.yaml",
        "--trainer.max_steps=6", "--trainer.val_check_interval=100", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--data.retain_size=16", "--data.forget_size=16", "--data.eval_per_domain=1",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_nan_loss_stops_the_fit_naming_term_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from ema_lightning.cli import main

    checkpoints = tmp_path / "checkpoints"
    args = _fit_args(
        tmp_path,
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={checkpoints}", "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.filename={step}",
        "--trainer.callbacks+=test_guards.PoisonAdapters", f"--trainer.callbacks.step={POISON_STEP}",
    )
    with pytest.raises(FloatingPointError, match=rf"non-finite forget loss \(nan\) at step {POISON_STEP}"):
        main(args)
    saved = sorted(p.name for p in checkpoints.iterdir())
    assert saved == [f"step={s}.ckpt" for s in range(1, POISON_STEP + 1)]
    last = torch.load(checkpoints / f"step={POISON_STEP}.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == POISON_STEP
    assert last["state_dict"] and all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not list((tmp_path / "logs").glob("*/version_*/export"))  # no export of a broken model


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--model.init_args.beta=-0.5", "beta must be > 0"),
        ("--data.target_domain=cooking", "cooking"),
    ],
    ids=["negative_beta", "unknown_domain"],
)
def test_invalid_values_fail_before_the_model_loads(tmp_path, model_loads, argument, message):
    from ema_lightning.cli import main

    with pytest.raises((ValueError, SystemExit)) as error:
        main(_fit_args(tmp_path, argument))
    text = str(error.value) + str(getattr(error.value, "__context__", "") or "")
    assert message in text
    assert model_loads == []


def test_unknown_lora_target_fails_before_training(tmp_path, model_loads):
    from ema_lightning.cli import main

    with pytest.raises(ValueError, match=r"unknown target module\(s\) \['qkv_proj'\].*linear modules of this model"):
        main(_fit_args(tmp_path, "--model.init_args.backbone.lora.target_modules=[q_proj, qkv_proj]"))
    assert model_loads == ["tiny"]  # the architecture is needed to know its module names
    assert not list((tmp_path / "logs").glob("*/version_*/checkpoints/*.ckpt"))
