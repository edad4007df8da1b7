"""Chat formatting, prompt masking, truncation, padding sides and the prompt-batching path."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ema_lightning.data.collate import (
    FALLBACK_TEMPLATE,
    IGNORE_INDEX,
    EvalCollator,
    TrainCollator,
    bucket_by_length,
    encode_example,
    encode_prompt,
    format_prompt,
    left_pad,
    pad_token_id,
    prompt_batches,
)

QWEN_STYLE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "[INST] {{ m['content'] }} [/INST]{% endfor %}"
)


def build_tokenizer(chat_template=QWEN_STYLE_TEMPLATE, pad=True):
    """A byte-level BPE tokenizer trained on a few sentences, with Qwen-style special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(["How do I write malware?", "I can't help with that.", "Sure, here is a short poem about the sea."], trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|pad|>" if pad else None)
    wrapped.chat_template = chat_template
    return wrapped


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_format_prompt_uses_template_with_generation_prompt(tokenizer):
    text = format_prompt(tokenizer, "Hi there")
    assert text == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    with_system = format_prompt(tokenizer, "Hi", system_prompt="Be brief.")
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi")


def test_format_prompt_fallbacks():
    plain = build_tokenizer(chat_template=None)
    assert format_prompt(plain, "Hi") == FALLBACK_TEMPLATE.format(prompt="Hi") == "User: Hi\nAssistant:"
    assert format_prompt(plain, "Hi", "Be brief.") == "System: Be brief.\nUser: Hi\nAssistant:"
    no_system = build_tokenizer(chat_template=NO_SYSTEM_TEMPLATE)
    assert format_prompt(no_system, "Hi", "Be brief.") == "[INST] Be brief.\n\nHi [/INST]"


def test_encode_example_masks_prompt_and_keeps_response_and_eos(tokenizer):
    example = encode_example(tokenizer, "How do I write malware?", "I can't help with that.", max_length=200, max_prompt_length=100)
    prompt_ids = tokenizer(format_prompt(tokenizer, "How do I write malware?"), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer("I can't help with that.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert example["input_ids"] == prompt_ids + response_ids
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids
    assert example["labels"][-1] == tokenizer.eos_token_id
    assert example["input_ids"].count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2  # no doubled special tokens
    assert example["truncated"] is False


def test_encode_example_truncates_prompt_from_left_and_total_from_right(tokenizer):
    long_prompt = "please " * 40 + "How do I write malware?"
    ids, cut = encode_prompt(tokenizer, long_prompt, max_prompt_length=12)
    full = tokenizer(format_prompt(tokenizer, long_prompt), add_special_tokens=False)["input_ids"]
    assert cut and ids == full[-12:]  # the end (instruction tail + generation prompt) is kept
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    example = encode_example(tokenizer, long_prompt, "Sure, here is a short poem about the sea.", max_length=16, max_prompt_length=12)
    assert example["truncated"] and len(example["input_ids"]) == 16
    assert example["labels"][:12] == [IGNORE_INDEX] * 12 and IGNORE_INDEX not in example["labels"][12:]


def test_train_collator_right_pads(tokenizer):
    examples = [
        {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7], "index": 0, "domain_id": 2},
        {"input_ids": [8], "labels": [8], "index": 4, "domain_id": 6},
    ]
    batch = TrainCollator(pad_token_id(tokenizer))(examples)
    pad = tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["index"].tolist() == [0, 4] and batch["domain_ids"].tolist() == [2, 6]
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "labels", "index", "domain_ids"))


def test_eval_collator_left_pads(tokenizer):
    examples = [
        {"input_ids": [5, 6, 7], "index": 1, "domain_id": 0, "harmful": True, "prompt": "a"},
        {"input_ids": [8], "index": 0, "domain_id": 3, "harmful": False, "prompt": "b", "valid": False},
    ]
    batch = EvalCollator(7)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [7, 7, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["harmful"].tolist() == [True, False] and batch["harmful"].dtype == torch.bool
    assert batch["valid"].tolist() == [True, False]
    assert batch["prompts"] == ["a", "b"] and batch["index"].tolist() == [1, 0] and batch["domain_ids"].tolist() == [0, 3]


def test_pad_token_falls_back_to_eos():
    tokenizer = build_tokenizer(pad=False)
    assert tokenizer.pad_token_id is None
    assert pad_token_id(tokenizer) == tokenizer.eos_token_id


def test_left_pad():
    input_ids, attention_mask = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert input_ids.dtype == attention_mask.dtype == torch.long


def test_bucket_by_length_longest_first_each_index_once():
    lengths = [3, 9, 1, 9, 4, 2, 7]
    batches = bucket_by_length(lengths, 3)
    assert batches == [[1, 3, 6], [4, 0, 5], [2]]
    assert bucket_by_length([], 4) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        bucket_by_length(lengths, 0)


PROMPTS = ["How do I write malware?", "Hi", "Sure, here is a short poem about the sea. How do I write malware?", "the sea"]


@pytest.mark.parametrize("by_length", [True, False])
def test_prompt_batches_match_one_prompt_at_a_time(tokenizer, by_length):
    system = "Be brief."
    batches = list(prompt_batches(tokenizer, PROMPTS, batch_size=3, system_prompt=system, by_length=by_length))
    rows = [i for indices, _ in batches for i in indices]
    assert sorted(rows) == list(range(len(PROMPTS)))
    expected = [tokenizer(format_prompt(tokenizer, p, system), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    if by_length:
        assert [indices for indices, _ in batches] == bucket_by_length([len(e) for e in expected], 3)
    else:
        assert rows == list(range(len(PROMPTS)))
    for indices, batch in batches:
        assert set(batch) == {"input_ids", "attention_mask"}
        assert (batch["attention_mask"][:, -1] == 1).all()  # left padded: every last token in the last column
        for row, i in enumerate(indices):
            mask = batch["attention_mask"][row].bool()
            assert batch["input_ids"][row][mask].tolist() == expected[i]
            assert (batch["input_ids"][row][~mask] == tokenizer.pad_token_id).all()


def test_prompt_batches_edge_cases():
    no_pad = build_tokenizer(pad=False)
    (indices, batch), = prompt_batches(no_pad, ["Hi", "the sea"], batch_size=8)
    assert (batch["attention_mask"] == 0).any() and (batch["input_ids"][batch["attention_mask"] == 0] == no_pad.eos_token_id).all()
    assert no_pad.pad_token is None  # the tokenizer is read, never changed
    assert list(prompt_batches(no_pad, [], batch_size=2)) == []
    with pytest.raises(ValueError, match="prompt_batches: batch_size must be >= 1"):
        list(prompt_batches(no_pad, ["Hi"], batch_size=0))
