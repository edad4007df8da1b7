"""Tiny test assets shared by test files: a word-level tokenizer and a random Qwen2 model."""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM


def word_level_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over `words`, with <|im_start|>/<|im_end|> (eos) and left padding."""
    specials = ["<unk>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|pad|>", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"], padding_side="left")


def tiny_qwen2(vocab_size: int, seed: int = 0) -> Qwen2ForCausalLM:
    """A 2-layer, 32-wide Qwen2 with random weights from `seed`, in eval mode."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).eval()
