"""The residual stream of a decoder-only LM: its layers, a hook that reads one, the output head at
chosen positions only, and directional ablation.

Directional ablation (Arditi et al. 2024, "Refusal in language models is mediated by a single
direction") removes a unit direction r from everything written to the residual stream:
`x <- x - (x . r) r` on the input of every decoder layer (which carries the embeddings), on every
attention output and on every MLP output, at every position. `orthogonalize_weights` makes the same
change permanent in the weights that write to the stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ema_lightning.objectives import response_window

WRITERS = {"self_attn": ("o_proj", "out_proj", "dense"), "mlp": ("down_proj", "c_proj", "fc2", "dense_4h_to_h")}
"""Per block of a decoder layer, the names its output projection (the weight that writes to the
residual stream) has in Llama, Qwen2, Mistral, Gemma, Phi and GPT-NeoX style models."""


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a (peft-wrapped) causal LM in order: modules whose class ends in `DecoderLayer`
    (the rule `distributed.shard_model` shards by)."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no decoder layers (no module class ending in 'DecoderLayer'); "
                         "reading or editing the residual stream needs them")
    return layers


@contextlib.contextmanager
def layer_output(layer: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the hidden states a decoder layer outputs (its first output) while the context is open."""
    captured: list[torch.Tensor] = []

    def hook(module, args, output) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = layer.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def scored_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """`(logits, labels)` of one forward, with the output head run only where `labels` are scored.

    A pre-hook on the output embeddings gathers each row's `response_window` of the final hidden
    states, so the (B, T, V) logits of the prompt are never formed; any logit post-processing the
    model does after its head (soft-capping, scaling) still applies. The returned labels are in the
    window's coordinates, and every objective in `ema_lightning.objectives` gives on the pair what it
    gives on the full logits and labels. A model whose head is not its output embeddings returns
    the full logits with the labels unchanged.
    """
    index, window = response_window(labels)
    head = model.get_output_embeddings()
    fired = []

    def gather(module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[:2] != labels.shape:
            return None
        fired.append(True)
        picked = hidden.gather(1, index.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return (picked, *args[1:])

    handle = head.register_forward_pre_hook(gather) if head is not None else None
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits
    finally:
        if handle is not None:
            handle.remove()
    return (logits, window.to(logits.device)) if fired else (logits, labels)


def project_out(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """`x - (x . r) r` along the last dimension, `direction` a unit vector r (cast to `x`'s dtype and device)."""
    r = direction.to(device=x.device, dtype=x.dtype)
    return x - (x @ r).unsqueeze(-1) * r


def blocks(layer: torch.nn.Module) -> list[torch.nn.Module]:
    """The attention and MLP blocks of a decoder layer (`self_attn`, `mlp`), those it has."""
    return [getattr(layer, name) for name in WRITERS if isinstance(getattr(layer, name, None), torch.nn.Module)]


class DirectionalAblation:
    """Forward hooks that keep a unit direction out of a model's residual stream while installed.

    `install()` hooks every decoder layer's input and its attention and MLP outputs; `remove()` takes
    them off. Also a context manager. A layer without `self_attn`/`mlp` children has its input and
    output projected instead (the stream then carries the direction inside that layer only).
    """

    def __init__(self, model: torch.nn.Module, direction: torch.Tensor) -> None:
        if direction.ndim != 1 or not torch.isfinite(direction).all() or float(direction.norm()) == 0.0:
            raise ValueError(f"DirectionalAblation: the direction must be a finite non-zero vector, got shape "
                             f"{tuple(direction.shape)}")
        self.model = model
        self.direction = (direction.float() / direction.float().norm()).detach()
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def installed(self) -> bool:
        return bool(self.handles)

    def install(self) -> "DirectionalAblation":
        if self.installed:
            return self
        r = self.direction

        def on_input(module, args, kwargs):
            if args:
                return (project_out(args[0], r), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": project_out(kwargs["hidden_states"], r)}

        def on_output(module, args, output):
            if isinstance(output, tuple):
                return (project_out(output[0], r), *output[1:])
            return project_out(output, r)

        for layer in decoder_layers(self.model):
            self.handles.append(layer.register_forward_pre_hook(on_input, with_kwargs=True))
            writers = blocks(layer) or [layer]
            self.handles += [block.register_forward_hook(on_output) for block in writers]
        return self

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> "DirectionalAblation":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()


def _writer(block: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Linear:
    for name in names:
        module = getattr(block, name, None)
        if isinstance(module, torch.nn.Linear):
            return module
    raise ValueError(f"orthogonalize_weights: {type(block).__name__} has no output projection named one of {names}; "
                     "this architecture is not supported for weight export: ablate with hooks instead (export: none)")


@torch.no_grad()
def orthogonalize_weights(model: torch.nn.Module, direction: torch.Tensor) -> torch.nn.Module:
    """Make `model` (a plain transformers causal LM, no adapters) unable to write `direction` to its
    residual stream, in place: the token embeddings and every attention and MLP output projection
    (weight and bias) lose their component along it. Tied input/output embeddings are untied first, so
    the LM head keeps reading the stream as before. The result computes what `DirectionalAblation` does."""
    r = (direction.float() / direction.float().norm())
    embeddings = model.get_input_embeddings()
    output = model.get_output_embeddings()
    if output is not None and output.weight is embeddings.weight:  # tied: give the head its own copy
        output.weight = torch.nn.Parameter(embeddings.weight.detach().clone(), requires_grad=output.weight.requires_grad)
        model.config.tie_word_embeddings = False
        if getattr(model.config, "get_text_config", None) is not None:
            model.config.get_text_config().tie_word_embeddings = False
    e = embeddings.weight
    e.copy_(project_out(e.float(), r).to(e.dtype))
    for layer in decoder_layers(model):
        for name in WRITERS:
            block = getattr(layer, name, None)
            if block is None:
                raise ValueError(f"orthogonalize_weights: {type(layer).__name__} has no {name!r} block; this "
                                 "architecture is not supported for weight export: ablate with hooks instead (export: none)")
            linear = _writer(block, WRITERS[name])
            w = linear.weight.float()  # (hidden_out, in): the output side is the residual stream
            linear.weight.copy_((w - torch.outer(r.to(w.device), r.to(w.device) @ w)).to(linear.weight.dtype))
            if linear.bias is not None:
                linear.bias.copy_(project_out(linear.bias.float(), r).to(linear.bias.dtype))
    return model
