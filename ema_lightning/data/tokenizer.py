"""A local byte-level BPE tokenizer with a Qwen-style chat template, trained on the built-in data.

No hub access is needed: `builtin_tokenizer(directory)` trains one on every built-in split (a
second or two), saves it with `save_pretrained`, and reuses it while the data, seed and vocabulary
size stay the same (recorded in `ema_builtin_tokenizer.json`). The result loads back offline with
`AutoTokenizer.from_pretrained(directory)`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ema_lightning.data.builtin import BUILTIN_SPLITS, builtin_records

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END)
"""Special tokens, ids 0, 1, 2 in this order. `<|im_end|>` is the eos token, `<|endoftext|>` the pad token."""

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)
"""Qwen-style ChatML without a default system prompt: `<|im_start|>role\\ncontent<|im_end|>\\n` per turn."""

CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant")
ROLE_HEADER_REPEATS = 1000

METADATA_FILE = "ema_builtin_tokenizer.json"
TOKENIZER_FORMAT = 1
"""Bump when the way the tokenizer is built changes, so saved ones are rebuilt."""


def build_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, model_max_length: int = 1024
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (any byte sequence stays encodable) with the chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The chat template's role headers occur in every example: seeding them makes each role one token.
    headers = [f"{role}\n" for role in CHAT_ROLES] * ROLE_HEADER_REPEATS
    backend.train_from_iterator(itertools.chain(texts, headers), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        model_max_length=model_max_length,
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
    )


def builtin_texts(seed: int = 0) -> list[str]:
    """Every prompt and response of every built-in split, in a fixed order."""
    texts: list[str] = []
    for split in BUILTIN_SPLITS:
        for record in builtin_records(split, seed):
            texts.append(record.prompt)
            if record.response:
                texts.append(record.response)
    return texts


def builtin_tokenizer(directory: str | Path, seed: int = 0, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """The tokenizer saved in `directory` if it was built from the same data, else a newly trained and saved one."""
    directory = Path(directory)
    texts = builtin_texts(seed)
    metadata = {
        "format": TOKENIZER_FORMAT,
        "seed": seed,
        "vocab_size": vocab_size,
        "data_sha256": hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest(),
    }
    metadata_path = directory / METADATA_FILE
    if metadata_path.is_file() and (directory / "tokenizer.json").is_file():
        try:
            saved = json.loads(metadata_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            saved = None
        if saved == metadata:
            return AutoTokenizer.from_pretrained(str(directory))
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return tokenizer
