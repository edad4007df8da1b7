"""Batched greedy generation for refusal evaluation: left padding, KV cache, stop when every row ended."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch

from ema_lightning.distributed import eval_mode, inference_context

# end-of-turn tokens of common chat templates, used as extra stop tokens when the tokenizer has them
END_OF_TURN_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """eos ids: the tokenizer's eos, end-of-turn tokens it knows, and the model's generation_config eos."""
    ids: list[int] = []

    def add(value) -> None:
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(i, int) and i >= 0 and i not in ids:
                ids.append(i)

    add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            add(vocab[token])
    config = getattr(model, "generation_config", None)
    if config is not None:
        add(config.eos_token_id)
    return ids


def generate(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int = 32,
    first_logits: Optional[list[torch.Tensor]] = None,
    sequences: Optional[list[torch.Tensor]] = None,
    **kwargs,
) -> list[str]:
    """Greedy responses (new tokens only, special tokens skipped), one string per row.

    Rows must be left padded (`data.collate.prompt_batches` and `EvalCollator` make such batches), so
    that every row's last column is its last prompt token. Generation stops once every row has
    emitted a stop token (see `stop_token_ids`) or after `max_new_tokens`. `kwargs` go to
    `model.generate` (e.g. `min_new_tokens`). The model runs in eval mode under inference_mode (no_grad when FSDP2-sharded);
    its training mode is restored afterwards. Works for plain and peft-wrapped causal LMs.

    With `first_logits` (a list), the raw (B, V) logits of the first generated position are appended
    to it: what a one-forward logit judge would compute, taken from the prefill for free. With
    `sequences` (a list), the (B, T + new) token ids (prompt and response, padded after a stop) are
    appended to it.
    """
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(f"generate: input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must be equal (B, T)")
    if input_ids.shape[0] and not bool(attention_mask[:, -1].all()):
        raise ValueError("generate: rows must be left padded (attention_mask[:, -1] all 1); "
                         "build batches with ema_lightning.data.collate.prompt_batches or EvalCollator")
    eos = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    options = dict(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
        pad_token_id=pad, eos_token_id=eos or None, temperature=None, top_p=None, top_k=None,
    )
    options.update(kwargs)
    with eval_mode(model), inference_context(model), _first_logits_hook(model, first_logits):
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
    if sequences is not None:
        sequences.append(output)
    new_tokens = output[:, input_ids.shape[1]:]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


@contextmanager
def _first_logits_hook(model, sink: Optional[list[torch.Tensor]]):
    """Append the LM head's output at the last position of its first call (the prefill) to `sink`.

    A hook on the output embeddings sees the raw logits, before any logits processor of `generate`.
    """
    if sink is None:
        yield
        return
    seen = []

    def hook(module, args, output) -> None:
        if not seen:
            seen.append(True)
            sink.append(output[:, -1, :].float())

    handle = model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
