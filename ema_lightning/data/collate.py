"""Chat formatting, prompt masking and padding: records -> token ids -> right-padded (train) or left-padded (eval) batches.

`prompt_batches` is the one prompt-batching path for work outside the DataLoaders (capture, generation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

IGNORE_INDEX = -100
FALLBACK_TEMPLATE = "User: {prompt}\nAssistant:"
"""Prompt format for tokenizers without a chat template (a system prompt goes on a "System: ..." line before it)."""


def format_prompt(tokenizer: Any, prompt: str, system_prompt: str | None = None) -> str:
    """The prompt as the model sees it before its answer: the chat template with the generation prompt.

    Tokenizers without a chat template get `FALLBACK_TEMPLATE`. Templates that reject a system
    role (e.g. some Mistral versions) get the system prompt prepended to the user message.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        text = FALLBACK_TEMPLATE.format(prompt=prompt)
        return f"System: {system_prompt}\n{text}" if system_prompt else text
    messages = [{"role": "user", "content": prompt}]
    if system_prompt:
        try:
            return tokenizer.apply_chat_template(
                [{"role": "system", "content": system_prompt}, *messages], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # jinja2 raises TemplateError for templates without a system role
            messages = [{"role": "user", "content": f"{system_prompt}\n\n{prompt}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, or its eos id when it has no pad token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad token nor an eos token; set tokenizer.pad_token")
    return int(pad)


def _ids(tokenizer: Any, text: str) -> list[int]:
    # The chat template text already holds the special tokens (bos, role markers): add none again.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(
    tokenizer: Any, prompt: str, max_prompt_length: int, system_prompt: str | None = None
) -> tuple[list[int], bool]:
    """Token ids of the formatted prompt, cut from the left to `max_prompt_length` (the end holds the
    instruction's tail and the generation prompt); returns (ids, truncated)."""
    ids = _ids(tokenizer, format_prompt(tokenizer, prompt, system_prompt))
    if len(ids) > max_prompt_length:
        return ids[-max_prompt_length:], True
    return ids, False


def encode_example(
    tokenizer: Any,
    prompt: str,
    response: str,
    max_length: int,
    max_prompt_length: int,
    system_prompt: str | None = None,
) -> dict[str, Any]:
    """Token ids and labels of (formatted prompt, response + eos): prompt labels are -100.

    `prompt` is the raw user text (formatted here with `format_prompt`). The prompt is cut from the
    left to `max_prompt_length`, then the response from the right so the total fits `max_length`.
    """
    prompt_ids, truncated = encode_prompt(tokenizer, prompt, min(max_prompt_length, max_length), system_prompt)
    eos = tokenizer.eos_token or ""
    response_ids = _ids(tokenizer, response + eos)
    room = max_length - len(prompt_ids)
    if len(response_ids) > room:
        response_ids, truncated = response_ids[:room], True
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        "truncated": truncated,
    }


def _pad(rows: Sequence[Sequence[int]], value: int, side: str) -> torch.Tensor:
    return pad_sequence([torch.as_tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value, padding_side=side)


def _attention_mask(rows: Sequence[Sequence[int]], side: str) -> torch.Tensor:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max()) if len(rows) else 0
    positions = torch.arange(width).unsqueeze(0)
    if side == "right":
        return (positions < lengths.unsqueeze(1)).long()
    return (positions >= (width - lengths).unsqueeze(1)).long()


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` of token rows padded on the left: every row's last token is in the last column."""
    return _pad(rows, pad_id, "left"), _attention_mask(rows, "left")


def bucket_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small.

    Every index appears exactly once; callers put results back with these indices.
    """
    if batch_size < 1:
        raise ValueError(f"bucket_by_length: batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def prompt_batches(
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int,
    system_prompt: str | None = None,
    by_length: bool = True,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Left-padded batches of chat-formatted prompts (`format_prompt`, no special tokens added, no truncation).

    Yields `(rows, {"input_ids", "attention_mask"})`, `rows` being the batch's positions in `prompts`.
    With `by_length` the batches group prompts of similar token length, longest first
    (`bucket_by_length`); without it they follow the order of `prompts`.
    """
    if batch_size < 1:
        raise ValueError(f"prompt_batches: batch_size must be >= 1, got {batch_size}")
    texts = [format_prompt(tokenizer, p, system_prompt) for p in prompts]
    if not texts:
        return
    # The chat template text already holds the special tokens (bos, role markers): add none again.
    ids = [list(row) for row in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if by_length:
        batches = bucket_by_length([len(row) for row in ids], batch_size)
    else:
        batches = [list(range(start, min(start + batch_size, len(ids)))) for start in range(0, len(ids), batch_size)]
    pad = pad_token_id(tokenizer)
    for rows in batches:
        input_ids, attention_mask = left_pad([ids[i] for i in rows], pad)
        yield rows, {"input_ids": input_ids, "attention_mask": attention_mask}


def prompt_rows(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """The prompt tokens of each row of a right-padded `TrainCollator` batch: its real tokens before the
    first scored label (all of them for a row without one). What a second response to the same prompt
    is put after (DPO's rejected response)."""
    rows = []
    for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()):
        real = sum(mask)
        scored = [t for t, label in enumerate(labels[:real]) if label != IGNORE_INDEX]
        rows.append(ids[: scored[0] if scored else real])
    return rows


class TrainCollator:
    """Right-padded TokenBatch from encoded examples (`input_ids`, `labels`, `index`, `domain_id`).

    Returns `input_ids`, `attention_mask`, `labels` (-100 on prompt and padding), `index`, `domain_ids`.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [e["input_ids"] for e in examples]
        return {
            "input_ids": _pad(ids, self.pad_token_id, "right"),
            "attention_mask": _attention_mask(ids, "right"),
            "labels": _pad([e["labels"] for e in examples], IGNORE_INDEX, "right"),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
            "domain_ids": torch.tensor([e["domain_id"] for e in examples], dtype=torch.long),
        }


class EvalCollator:
    """Left-padded prompts for generation, from encoded examples (`input_ids`, `index`, `domain_id`,
    `harmful`, `prompt`, optional `valid`).

    Returns `input_ids`, `attention_mask`, `domain_ids`, `harmful` (bool), `index`, `prompts`
    (raw user text) and `valid` (bool; False for the padding copies of a distributed shard).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        input_ids, attention_mask = left_pad([e["input_ids"] for e in examples], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "domain_ids": torch.tensor([e["domain_id"] for e in examples], dtype=torch.long),
            "harmful": torch.tensor([bool(e["harmful"]) for e in examples], dtype=torch.bool),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
            "prompts": [e["prompt"] for e in examples],
            "valid": torch.tensor([bool(e.get("valid", True)) for e in examples], dtype=torch.bool),
        }
