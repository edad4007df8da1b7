"""Export a trained model: the LoRA adapter in PEFT format, the merged or full model, and a tiny base.

Called at the end of fit (`CausalLMModule.on_fit_end`). Under FSDP2 every rank must call it (the
full state dict is gathered collectively); only rank 0 writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional

import torch

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
    if export == "adapter":
        model.save_pretrained(directory / "adapter", state_dict=state)
        tokenizer.save_pretrained(directory / "adapter")
        if random_base:
            base = model.get_base_model()
            base.save_pretrained(directory / "base", state_dict=base_state_dict(base, state))
            tokenizer.save_pretrained(directory / "base")
    else:
        if export == "merged" and uses_lora:
            model = model.merge_and_unload()
        model.save_pretrained(directory / "model", state_dict=state)
        tokenizer.save_pretrained(directory / "model")
    log.info("exported %s to %s", export, directory)
    return model


def base_state_dict(model: torch.nn.Module, full: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """State dict of a LoRA-injected model as the plain base model would have it."""
    state = {}
    source = model.state_dict() if full is None else {k.removeprefix("base_model.model."): v for k, v in full.items()}
    for key, value in source.items():
        if "lora_" in key or "lora_magnitude" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state
