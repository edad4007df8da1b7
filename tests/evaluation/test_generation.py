"""Batched greedy generation: left padding equals one-at-a-time, new tokens only, stops, peft, train mode."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tiny_assets import tiny_qwen2, word_level_tokenizer

from ema_lightning.evaluation.generation import generate, stop_token_ids

WORDS = "user assistant how do I make a cake bomb hello please tell me about the weather today sure here is step one two three no sorry".split()
PROMPTS = [
    "<|im_start|> user how do I make a cake <|im_end|> <|im_start|> assistant",
    "<|im_start|> user hello <|im_end|> <|im_start|> assistant",
    "<|im_start|> user please tell me about the weather today <|im_end|> <|im_start|> assistant",
]


def tiny_tokenizer():
    return word_level_tokenizer(WORDS)


def tiny_model(vocab_size, seed=0):
    return tiny_qwen2(vocab_size, seed)


@pytest.fixture(scope="module")
def setup():
    tokenizer = tiny_tokenizer()
    return tokenizer, tiny_model(len(tokenizer))


def _batch(tokenizer, prompts, side="left"):
    return tokenizer(prompts, padding=True, padding_side=side, return_tensors="pt")


def test_batched_equals_one_at_a_time(setup):
    tokenizer, model = setup
    batch = _batch(tokenizer, PROMPTS)
    assert not batch["attention_mask"].all()  # padding really happens
    batched = generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=8, min_new_tokens=8)
    for i, prompt in enumerate(PROMPTS):
        alone = _batch(tokenizer, [prompt])
        assert generate(model, tokenizer, alone["input_ids"], alone["attention_mask"], max_new_tokens=8, min_new_tokens=8) == [batched[i]]
    assert len(batched) == 3


def test_new_tokens_only_and_max_new_tokens(setup):
    tokenizer, model = setup
    batch = _batch(tokenizer, PROMPTS)
    out = generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=5, min_new_tokens=5)
    for text in out:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert 0 < len(ids) <= 5
    # exact: the decoded text equals decoding the 5 tokens after the prompt of HF generate
    with torch.no_grad():
        full = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out == tokenizer.batch_decode(full[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert full.shape[1] == batch["input_ids"].shape[1] + 5


def test_stops_when_every_row_ended(setup):
    tokenizer, model = setup
    batch = _batch(tokenizer, PROMPTS)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    calls = []
    handle = model.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=16, sequence_bias={(end,): 1e4})
    finally:
        handle.remove()
    assert out == ["", "", ""]  # <|im_end|> is special: skipped
    assert len(calls) == 1  # one forward pass: every row ended at the first token


def test_stop_token_ids_include_end_of_turn():
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "<unk>"  # a tokenizer whose eos is not the chat end-of-turn token
    ids = stop_token_ids(tokenizer)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<unk>")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids


def test_right_padded_rows_are_refused(setup):
    """Generation reads every row's last column as its last prompt token: right padding is an error, not a guess."""
    tokenizer, model = setup
    right = _batch(tokenizer, PROMPTS, side="right")
    assert not bool(right["attention_mask"][:, -1].all())  # the prompts differ in length
    with pytest.raises(ValueError, match="left padded"):
        generate(model, tokenizer, right["input_ids"], right["attention_mask"], max_new_tokens=4)
    left = _batch(tokenizer, PROMPTS)
    with pytest.raises(ValueError, match="must be equal"):
        generate(model, tokenizer, left["input_ids"], left["attention_mask"][:, 1:])


def test_peft_model_and_training_mode_restored():
    tokenizer = tiny_tokenizer()
    base = tiny_model(len(tokenizer), seed=1)
    batch = _batch(tokenizer, PROMPTS)
    expected = generate(base, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=6, min_new_tokens=6)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1))
    peft_model.train()
    out = generate(peft_model, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=6, min_new_tokens=6)
    assert out == expected  # LoRA B starts at zero and dropout is off in eval mode
    assert peft_model.training


def test_first_logits_are_the_logit_judges_forward(setup):
    """The prefill logits generation hands back are what the one-forward logit judge computes."""
    from ema_lightning.evaluation.judges import LogitRefusalJudge

    tokenizer, model = setup
    batch = _batch(tokenizer, PROMPTS)
    sink: list[torch.Tensor] = []
    generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=4, first_logits=sink)
    assert len(sink) == 1 and sink[0].shape == (len(PROMPTS), len(tokenizer))
    direct = LogitRefusalJudge().last_logits(model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(sink[0], direct, rtol=1e-4, atol=1e-5)
    generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=4)
    assert len(model.get_output_embeddings()._forward_hooks) == 0  # the hook is removed
