"""Residual-stream capture: one batched forward per prompt batch, every layer at once.

`output_hidden_states=True` returns the embeddings and the output of every decoder layer, i.e. the
residual stream at each layer (index 0 = embeddings, index l = after decoder layer l). Following the
transformers convention the last entry is taken after the final norm.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence

import torch

from ema_lightning.data.collate import prompt_batches
from ema_lightning.data.samplers import strided_shard
from ema_lightning.distributed import eval_mode, inference_context

POSITIONS = ("last", "mean")
"""`last`: the last prompt token (the post-instruction position, left padding); `mean`: mean over prompt tokens."""


def capture_activations(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    positions: Sequence[str] = ("last",),
    batch_size: int = 32,
    system_prompt: str | None = None,
    adapters: bool = True,
) -> dict[str, torch.Tensor]:
    """Residual-stream activations of `prompts` at every layer.

    Returns `{position: Tensor(n_prompts, n_layers + 1, hidden)}` in float32 on CPU, rows in the order
    of `prompts`. Prompts are formatted with the chat template (generation prompt added). Under
    torch.distributed with world size > 1 every rank must call this with the same prompts: each rank
    runs a strided shard of equal size (padded with a duplicate), and all ranks get every row back.
    `adapters=False` runs a peft model with its adapters disabled.
    """
    positions = tuple(positions)
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown or not positions:
        raise ValueError(f"capture_activations: positions {unknown or positions!r}; accepted: {', '.join(POSITIONS)}")
    if batch_size < 1:
        raise ValueError(f"capture_activations: batch_size must be >= 1, got {batch_size}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("capture_activations: no prompts given")

    rank, world = _dist_rank_world()
    if world > 1:
        indices, padding = strided_shard(len(prompts), rank, world)  # equal shards: FSDP needs the same forwards on every rank
        indices += [indices[0] if indices else 0] * padding
        local = _capture_local(model, tokenizer, [prompts[i] for i in indices], positions, batch_size, system_prompt, adapters)
        return _gather_strided(local, len(prompts), world)
    return _capture_local(model, tokenizer, prompts, positions, batch_size, system_prompt, adapters)


def _capture_local(model, tokenizer, prompts, positions, batch_size, system_prompt, adapters) -> dict[str, torch.Tensor]:
    device = _model_device(model)
    forward_kwargs = {"output_hidden_states": True, "use_cache": False, "return_dict": True}
    if _accepts_logits_to_keep(model):
        forward_kwargs["logits_to_keep"] = 1  # skip the (T, vocab) logits we do not need
    out: dict[str, list[torch.Tensor]] = {p: [] for p in positions}
    with eval_mode(model), _adapters_enabled(model, adapters), inference_context(model):
        # In prompt order (rows come back in order); left padded, so the last column is every prompt's last token.
        for _, enc in prompt_batches(tokenizer, prompts, batch_size, system_prompt, by_length=False):
            input_ids = enc["input_ids"].to(device)
            attention_mask = enc["attention_mask"].to(device)
            # Positions count real tokens only, so a left-padded prompt is encoded as it is alone.
            position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
            hidden = model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **forward_kwargs
            ).hidden_states
            for position, acts in select_positions(hidden, attention_mask, positions).items():
                out[position].append(acts.cpu())
    return {p: torch.cat(chunks) for p, chunks in out.items()}


def select_positions(
    hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor, positions: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Reduce per-layer `(B, T, H)` states of a left-padded batch to `(B, L+1, H)` float32 per position."""
    result = {}
    if "last" in positions:
        result["last"] = torch.stack([h[:, -1].float() for h in hidden_states], dim=1)
    if "mean" in positions:
        pad = (attention_mask == 0).unsqueeze(-1)  # (B, T, 1)
        count = (~pad).sum(dim=1).clamp_min(1)  # (B, 1)
        # masked_fill, not a product: fully masked pad rows may hold NaN under some attention kernels.
        result["mean"] = torch.stack([h.float().masked_fill(pad, 0.0).sum(dim=1) / count for h in hidden_states], dim=1)
    return result


def _gather_strided(local: dict[str, torch.Tensor], n: int, world: int) -> dict[str, torch.Tensor]:
    """Undo the strided sharding: rank r's row j is prompt r + j * world; padded rows are dropped."""
    import torch.distributed as dist

    gathered: list[dict[str, torch.Tensor] | None] = [None] * world
    dist.all_gather_object(gathered, local)
    result = {}
    for position in local:
        shards = [g[position] for g in gathered]
        rows = torch.stack(shards, dim=1).flatten(0, 1)  # row j*world + r  ==  prompt r + j*world
        result[position] = rows[:n].contiguous()
    return result


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def _adapters_enabled(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    if enabled:
        yield
        return
    try:
        from peft import PeftModel
    except ImportError:  # no peft: the model has no adapters to disable
        yield
        return
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield
    else:
        yield
