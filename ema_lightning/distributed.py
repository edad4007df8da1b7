"""Distributed helpers: FSDP2 sharding of the decoder layers and full-state export.

`shard_model` is called from `CausalLMModule.configure_model` when the strategy gives the module a
device mesh (Lightning's ModelParallelStrategy); `full_state_dict` gathers sharded weights for `ema_lightning.export`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch


def shard_model(model: torch.nn.Module, device_mesh) -> torch.nn.Module:
    """Apply FSDP2 `fully_shard` to every decoder layer, then to the whole model."""
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module, mesh=mesh)
    # The root unit goes on the transformers model itself, not on a peft wrapper: HF `generate` calls
    # the inner model, and FSDP2 gathers the root's weights (embeddings, norm, head) only in that
    # module's own forward hooks.
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    fully_shard(root, mesh=mesh)
    return model


def full_state_dict(model: torch.nn.Module) -> Optional[dict[str, torch.Tensor]]:
    """The unsharded state dict on every rank when `model` is FSDP2-sharded; None otherwise."""
    from torch.distributed.tensor import DTensor

    state = model.state_dict()
    if not any(isinstance(v, DTensor) for v in state.values()):
        return None
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu() for k, v in state.items()}


def is_sharded(model: torch.nn.Module) -> bool:
    """True when `model` holds FSDP2 (DTensor) parameters."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode for the block; afterwards every module is back in its own mode (a LoRA
    model in training keeps its frozen base's eval-mode modules as they were)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def inference_context(model: torch.nn.Module):
    """`torch.inference_mode()`, or `torch.no_grad()` for an FSDP2-sharded model: FSDP2 reuses the
    buffers it gathers weights into, and buffers made under inference_mode cannot be written by the
    next training step."""
    return torch.no_grad() if is_sharded(model) else torch.inference_mode()
