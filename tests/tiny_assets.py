"""Tiny test assets shared by every test folder: a word-level tokenizer and a random-init Qwen2.

Importable from any test module as ``from tiny_assets import ...`` (pyproject's pytest ``pythonpath``
puts ``tests/`` on ``sys.path``; pytest advises against importing ``conftest``). Each test passes the
vocabulary and sizes its assertions depend on; the defaults are the 2-layer, 32-wide model of
litgpt/torchtune-style tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# Model-size defaults of every tiny Qwen2 in the tests; ``Backbone(tiny=tiny_qwen2_config(...))`` takes
# the same dict, so a module built through the package and one built here have the same shape.
TINY_QWEN2: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}

# Chat template in the word-level vocabulary: every piece is a whitespace-separated word.
WORD_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant{% endif %}"
)


def tiny_qwen2_config(**overrides: Any) -> dict[str, Any]:
    """The tiny Qwen2 settings as a ``Backbone.tiny`` dict (with ``model_type``), with ``overrides`` applied."""
    return {**TINY_QWEN2, **overrides}


def tiny_qwen2(vocab_size: int, seed: int = 0, **overrides: Any):
    """A random-init tiny Qwen2 (weights from ``torch.manual_seed(seed)``) in eval mode.

    ``overrides`` change any ``Qwen2Config`` field of ``TINY_QWEN2`` (e.g. ``max_position_embeddings=64``).
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    settings = tiny_qwen2_config(vocab_size=vocab_size, **overrides)
    settings.pop("model_type")
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**settings)).eval()


def word_level_tokenizer(
    words: Sequence[str],
    *,
    specials: Sequence[str] = ("<unk>", "<|pad|>", "<|im_start|>", "<|im_end|>"),
    unk_token: str = "<unk>",
    pad_token: str | None = "<|pad|>",
    eos_token: str = "<|im_end|>",
    padding_side: str = "left",
    chat_template: str | None = None,
):
    """Whitespace word-level tokenizer: ids are ``specials`` then ``words`` in order (duplicates dropped).

    ``specials`` are special tokens of the backend (never split, skipped when decoding); the ones that are
    not unk/pad/eos become ``additional_special_tokens``; ``pad_token=None`` leaves the padding token unset. ``chat_template`` is set as given
    (``WORD_CHAT_TEMPLATE`` for chat-formatted prompts).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(dict.fromkeys([*specials, *words]))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(list(specials))
    named = {unk_token, pad_token, eos_token}
    pad = {} if pad_token is None else {"pad_token": pad_token}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk_token, eos_token=eos_token, **pad,
        additional_special_tokens=[t for t in specials if t not in named], padding_side=padding_side,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def planted_activations(seed: int = 0, n: int = 40, layers: int = 4, hidden: int = 64):
    """Synthetic residual-stream activations: every domain gets its own random mean direction, except
    bias and privacy, which share one (so their concept vectors are the most similar pair)."""
    from ema_lightning.concepts.vectors import unit
    from ema_lightning.domains import DOMAINS

    g = torch.Generator().manual_seed(seed)
    directions = unit(torch.randn(len(DOMAINS), layers, hidden, generator=g)) * 4
    shared = unit(torch.randn(layers, hidden, generator=g)) * 4
    directions[DOMAINS.index("bias")] = shared
    directions[DOMAINS.index("privacy")] = shared
    acts = {d: torch.randn(n, layers, hidden, generator=g) + directions[i] for i, d in enumerate(DOMAINS)}
    neutral = torch.randn(2 * n, layers, hidden, generator=g)
    return acts, neutral
