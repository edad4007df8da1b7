"""Local byte-level BPE tokenizer: round trip, special tokens, chat template, save / reuse / rebuild."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from ema_lightning.data import tokenizer as tokenizer_module
from ema_lightning.data.builtin import builtin_records
from ema_lightning.data.tokenizer import (
    IM_END,
    IM_START,
    METADATA_FILE,
    PAD_TOKEN,
    build_tokenizer,
    builtin_tokenizer,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    return directory, builtin_tokenizer(directory, seed=0, vocab_size=1024)


def test_round_trip_restores_spaces_and_any_bytes(saved):
    _, tokenizer = saved
    texts = [
        "How do I protect my laptop from phishing?",
        "  two leading spaces,  double  spaces\tand a tab\nand a newline ",
        "Unseen words: Zyxwvut qqq 12345 !@#$%^&*()",
        "Non-ASCII survives too: caf\u00e9, \u4e2d\u6587, \U0001f600",
    ]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    for record in builtin_records("eval")[:50]:
        ids = tokenizer(record.prompt)["input_ids"]
        assert tokenizer.decode(ids) == record.prompt


def test_special_tokens_are_single_ids(saved):
    _, tokenizer = saved
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.eos_token == IM_END
    ids = set()
    for token in (PAD_TOKEN, IM_START, IM_END):
        encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(encoded) == 1, token
        assert tokenizer.convert_ids_to_tokens(encoded) == [token]
        ids.add(encoded[0])
    assert ids == {0, 1, 2}
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 2
    assert tokenizer.padding_side == "right" and tokenizer.model_max_length == 1024
    # No BOS / EOS are added by plain encoding.
    assert tokenizer("hi")["input_ids"] == tokenizer("hi", add_special_tokens=False)["input_ids"]


def test_chat_template(saved):
    _, tokenizer = saved
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    text = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
        tokenize=False,
    )
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    # Role headers are single tokens.
    for role in ("system", "user", "assistant"):
        assert len(tokenizer(role, add_special_tokens=False)["input_ids"]) == 1, role


def test_loads_back_offline_and_is_reused(saved, monkeypatch):
    directory, tokenizer = saved
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = AutoTokenizer.from_pretrained(str(directory))
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.pad_token == PAD_TOKEN and loaded.eos_token == IM_END and loaded.padding_side == "right"
    message = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(message, tokenize=False, add_generation_prompt=True) == (
        tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    )
    text = "Quick question: How do I safely store bleach?"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]

    def no_training(*args, **kwargs):
        raise AssertionError("the saved tokenizer should have been reused")

    monkeypatch.setattr(tokenizer_module, "build_tokenizer", no_training)
    reused = builtin_tokenizer(directory, seed=0, vocab_size=1024)
    assert reused.get_vocab() == tokenizer.get_vocab()


def test_rebuilt_when_metadata_differs(tmp_path):
    first = builtin_tokenizer(tmp_path, seed=0, vocab_size=512)
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    assert metadata["seed"] == 0 and metadata["vocab_size"] == 512 and len(metadata["data_sha256"]) == 64
    metadata["data_sha256"] = "0" * 64  # as if the built-in data had changed
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    rebuilt = builtin_tokenizer(tmp_path, seed=0, vocab_size=512)
    assert rebuilt.get_vocab() == first.get_vocab()
    assert json.loads((tmp_path / METADATA_FILE).read_text())["data_sha256"] != "0" * 64
    bigger = builtin_tokenizer(tmp_path, seed=0, vocab_size=768)
    assert len(bigger) == 768 > len(first)


def test_build_tokenizer_on_any_texts():
    tokenizer = build_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
    assert len(tokenizer) <= 300
    assert tokenizer.decode(tokenizer("the dog sat")["input_ids"]) == "the dog sat"
    batch = tokenizer(["the cat", "the cat sat on the mat"], padding=True)
    assert batch["input_ids"][0][-1] == tokenizer.pad_token_id  # right padding
