"""Export a trained model: the LoRA adapter in PEFT format, the merged or full model, and a tiny base.

Called at the end of fit (`CausalLMModule.on_fit_end`). Under FSDP2 every rank must call it (the
full state dict is gathered collectively); only rank 0 writes.

An export is complete or absent: everything is written into `<directory>.tmp-<pid>` beside it and
renamed into place at the end, so a full disk or a crash never leaves `export/base/` with config files
and no weights; on error the temporary is removed and an earlier complete export is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Optional

import torch

from ema_lightning.checkpoints import remove_stale_temporaries, temporary_path
from ema_lightning.distributed import full_state_dict

log = logging.getLogger(__name__)

Export = Literal["adapter", "merged", "full", "none"]


def export_model(
    model: torch.nn.Module, tokenizer, export: Export, directory: Path, *, uses_lora: bool, random_base: bool,
    rank_zero: bool,
) -> torch.nn.Module:
    """Write `adapter/` (PEFT format; with `random_base`, also `base/`, which cannot be loaded from
    anywhere else), or `model/` (merged or full). Returns the model, merged when `export="merged"`."""
    if export == "none":
        return model
    state = full_state_dict(model)  # collective under FSDP2: every rank takes part
    if not rank_zero:
        return model
    if export == "adapter" and not uses_lora:
        log.warning("export='adapter' without LoRA: writing the full model instead")
        export = "full"
    with staged_folder(Path(directory)) as staging:
        if export == "adapter":
            model.save_pretrained(staging / "adapter", state_dict=state)
            tokenizer.save_pretrained(staging / "adapter")
            if random_base:
                base = model.get_base_model()
                base.save_pretrained(staging / "base", state_dict=base_state_dict(base, state))
                tokenizer.save_pretrained(staging / "base")
        else:
            if export == "merged" and uses_lora:
                model = model.merge_and_unload()
            model.save_pretrained(staging / "model", state_dict=state)
            tokenizer.save_pretrained(staging / "model")
    log.info("exported %s to %s", export, directory)
    return model


@contextlib.contextmanager
def staged_folder(directory: Path) -> Iterator[Path]:
    """Yield an empty `<directory>.tmp-<pid>` beside `directory`; when the block ends without error,
    it replaces `directory` (an earlier one is removed only after the new one is in place). On error
    the temporary is removed and `directory` is as it was. Stale temporaries of dead processes beside
    it are removed first (only `directory`'s own: the folder around it may hold anything)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory.parent, directory.name)
    staging = temporary_path(directory)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        _replace_folder(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_folder(new: Path, directory: Path) -> None:
    """Rename `new` to `directory`; an existing `directory` is moved aside first and removed after."""
    if not directory.exists():
        os.rename(new, directory)
        return
    previous = directory.with_name(f"{directory.name}.previous-{os.getpid()}")
    shutil.rmtree(previous, ignore_errors=True)
    os.rename(directory, previous)
    try:
        os.rename(new, directory)
    except BaseException:
        os.rename(previous, directory)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def base_state_dict(model: torch.nn.Module, full: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """State dict of a LoRA-injected model as the plain base model would have it."""
    state = {}
    source = model.state_dict() if full is None else {k.removeprefix("base_model.model."): v for k, v in full.items()}
    for key, value in source.items():
        if "lora_" in key or "lora_magnitude" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state
