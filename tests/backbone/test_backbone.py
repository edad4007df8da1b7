"""Backbone settings, model / tokenizer loading, LoRA targets and full-size parameter counts (meta device)."""

import pytest
import torch

from tiny_assets import tiny_qwen2_config, word_level_tokenizer

from ema_lightning.backbone import (
    DEFAULT_LORA_TARGETS,
    Backbone,
    LoraSettings,
    build_meta_model,
    count_parameters,
    linear_module_names,
    load_model,
    load_tokenizer,
    lora_target_modules,
)

TINY_QWEN2 = tiny_qwen2_config(vocab_size=128, max_position_embeddings=64)
TINY_MISTRAL = {**TINY_QWEN2, "model_type": "mistral", "head_dim": 8}

QWEN25_7B = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
}
MISTRAL_7B_V03 = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 32768,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
}
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora_count(model, targets, r):
    """r * (in + out) summed over every linear layer whose last name is a target."""
    return sum(
        r * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )


# --- settings validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of name_or_path"),
        ({"name_or_path": "x", "tiny": TINY_QWEN2}, "exactly one of name_or_path"),
        ({"tiny": {"hidden_size": 8}}, "model_type"),
        ({"tiny": TINY_QWEN2, "gguf_file": "m.gguf"}, "combines only with tokenizer"),
        ({"name_or_path": "x", "dtype": "fp8"}, "Backbone.dtype must be one of"),
    ],
)
def test_backbone_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Backbone(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"r": 0}, "r must be a positive integer"),
        ({"alpha": 0}, "alpha must be > 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"target_modules": "q_proj"}, "list of module names"),
    ],
)
def test_lora_settings_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraSettings(**kwargs)


def test_tiny_combines_with_tokenizer_and_lora():
    b = Backbone(tiny=TINY_QWEN2, tokenizer="some/dir", lora={"r": 4})
    assert b.lora == LoraSettings(r=4)


def test_every_field_has_a_docstring_for_help():
    import ast
    import inspect

    import ema_lightning.backbone as module

    tree = ast.parse(inspect.getsource(module))
    for cls in (Backbone, LoraSettings):
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
        body = node.body
        for i, statement in enumerate(body):
            if isinstance(statement, ast.AnnAssign):
                following = body[i + 1]
                assert isinstance(following, ast.Expr) and isinstance(following.value.value, str), (
                    f"{cls.__name__}.{statement.target.id} has no docstring line"
                )


# --- tiny models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY_QWEN2, TINY_MISTRAL], ids=["qwen2", "mistral"])
def test_tiny_model_builds_and_runs(config):
    torch.manual_seed(0)
    model = load_model(Backbone(tiny=config))
    assert model.config.model_type == config["model_type"]
    assert next(model.parameters()).dtype == torch.float32
    logits = model(input_ids=torch.randint(0, 128, (2, 5))).logits
    assert logits.shape == (2, 5, 128)
    trainable, total = count_parameters(model)
    assert trainable == total > 0


def test_tiny_model_is_seeded_by_caller():
    torch.manual_seed(3)
    first = load_model(Backbone(tiny=TINY_QWEN2))
    torch.manual_seed(3)
    second = load_model(Backbone(tiny=TINY_QWEN2))
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_tiny_model_bfloat16():
    model = load_model(Backbone(tiny=TINY_QWEN2, dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("config", [TINY_QWEN2, TINY_MISTRAL], ids=["qwen2", "mistral"])
def test_lora_trainable_parameters_match_hand_count(config):
    base = load_model(Backbone(tiny=config))
    model = load_model(Backbone(tiny=config, lora=LoraSettings(r=4)))
    trainable, total = count_parameters(model)
    expected = _lora_count(base, ALL_PROJECTIONS, 4)
    # hidden 32, kv 2 heads x 8 = 16, mlp 64: per layer q 64 + k 48 + v 48 + o 64 + gate 96 + up 96 + down 96.
    assert expected == 2 * 4 * (64 + 48 + 48 + 64 + 96 + 96 + 96)
    assert trainable == expected
    assert total == count_parameters(base)[1] + expected
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_lora_on_chosen_targets_only():
    model = load_model(Backbone(tiny=TINY_QWEN2, lora=LoraSettings(r=2, target_modules=["q_proj", "v_proj"])))
    trainable, _ = count_parameters(model)
    assert trainable == 2 * 2 * ((32 + 32) + (32 + 16))


def test_unknown_target_module_lists_valid_names():
    model = load_model(Backbone(tiny=TINY_QWEN2))
    with pytest.raises(ValueError, match="unknown target module") as error:
        lora_target_modules(model, LoraSettings(target_modules=["q_proj", "query_key_value"]))
    message = str(error.value)
    assert "query_key_value" in message
    for name in ALL_PROJECTIONS + ["lm_head"]:
        assert name in message
    with pytest.raises(ValueError, match="unknown target module"):
        load_model(Backbone(tiny=TINY_QWEN2, lora=LoraSettings(target_modules=["c_attn"])))


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "llama"},
        {"model_type": "gemma", "head_dim": 8},
        {"model_type": "gemma2", "head_dim": 8},
        {"model_type": "phi3"},
        {"model_type": "phi"},
        {"model_type": "qwen3", "head_dim": 8},
        {"model_type": "starcoder2"},
        {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 4, "n_positions": 32},
        {"model_type": "gpt_neox"},
        {"model_type": "falcon"},
        {"model_type": "opt", "ffn_dim": 64, "word_embed_proj_dim": 32},
    ],
    ids=lambda c: c["model_type"],
)
def test_default_targets_exist_in_each_architecture(config):
    small = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 64,
        "max_position_embeddings": 32,
        "pad_token_id": 0,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    model = build_meta_model(Backbone(tiny={**small, **config}))
    targets = lora_target_modules(model)
    assert targets == DEFAULT_LORA_TARGETS[config["model_type"]]
    names = linear_module_names(model)
    assert set(targets) <= set(names), f"missing {set(targets) - set(names)} in {names}"
    # ...and PEFT accepts them on that architecture.
    adapted = build_meta_model(Backbone(tiny={**small, **config}, lora=LoraSettings(r=2)))
    assert count_parameters(adapted)[0] > 0


def test_unknown_architecture_falls_back_to_all_linear_but_head():
    model = build_meta_model(Backbone(tiny={**TINY_QWEN2}))
    model.config.model_type = "something_new"
    assert lora_target_modules(model) == sorted(ALL_PROJECTIONS)


# --- saving, reloading, tokenizer ----------------------------------------------------------------


def _save_tokenizer(directory, with_pad):
    """Vocabulary <unk>=0 </s>=1 <pad>=2 hello=3 world=4; <pad> is the padding token only `with_pad`."""
    word_level_tokenizer(
        ["hello", "world"], specials=("<unk>", "</s>", "<pad>"), eos_token="</s>",
        pad_token="<pad>" if with_pad else None, padding_side="right",
    ).save_pretrained(directory)


def test_save_and_reload_through_name_or_path(tmp_path):
    torch.manual_seed(0)
    original = load_model(Backbone(tiny=TINY_QWEN2))
    original.save_pretrained(tmp_path / "model")
    reloaded = load_model(Backbone(name_or_path=str(tmp_path / "model")))
    for (name, a), (_, b) in zip(original.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 128, (1, 6))
    torch.testing.assert_close(original(input_ids=ids).logits, reloaded(input_ids=ids).logits)

    # A separate directory: transformers picks the tokenizer class from a config.json's model_type.
    _save_tokenizer(tmp_path / "tokenizer", with_pad=False)
    tokenizer = load_tokenizer(Backbone(name_or_path=str(tmp_path / "tokenizer")))
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer("hello world")["input_ids"] == [3, 4]

    bf16_lora = load_model(Backbone(name_or_path=str(tmp_path / "model"), dtype="bfloat16", lora=LoraSettings(r=2)))
    assert next(bf16_lora.base_model.model.parameters()).dtype == torch.bfloat16


def test_tokenizer_keeps_existing_pad_and_tiny_needs_a_tokenizer(tmp_path):
    _save_tokenizer(tmp_path, with_pad=True)
    assert load_tokenizer(Backbone(tiny=TINY_QWEN2, tokenizer=str(tmp_path))).pad_token == "<pad>"
    with pytest.raises(ValueError, match="Backbone.tokenizer must be set"):
        load_tokenizer(Backbone(tiny=TINY_QWEN2))


def test_gguf_errors_are_clear(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'ema-lightning\[gguf\]'"):
        load_model(Backbone(name_or_path=str(tmp_path), gguf_file="model.Q4_K_M.gguf"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match="no such file 'model.Q4_K_M.gguf'"):
        load_model(Backbone(name_or_path=str(tmp_path), gguf_file="model.Q4_K_M.gguf"))


def test_gradient_checkpointing_with_lora_still_trains_adapters():
    torch.manual_seed(0)
    model = load_model(Backbone(tiny=TINY_QWEN2, gradient_checkpointing=True, lora=LoraSettings(r=2, dropout=0.0)))
    model.train()
    base = model.get_base_model()
    assert base.is_gradient_checkpointing and base.config.use_cache is False
    ids = torch.randint(0, 128, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


# --- full-size architectures on the meta device --------------------------------------------------


@pytest.mark.parametrize(
    "config, expected_total",
    [(QWEN25_7B, 7_615_616_512), (MISTRAL_7B_V03, 7_248_023_552)],
    ids=["qwen2.5-7b-instruct", "mistral-7b-instruct-v0.3"],
)
def test_full_size_parameter_counts_on_meta(config, expected_total):
    base = build_meta_model(Backbone(tiny=config))
    assert next(base.parameters()).device.type == "meta"
    trainable, total = count_parameters(base)
    assert total == expected_total
    model = build_meta_model(Backbone(tiny=config, lora=LoraSettings(r=16)))
    trainable, total = count_parameters(model)
    assert trainable == _lora_count(base, ALL_PROJECTIONS, 16)
    assert total == expected_total + trainable
    # Hand formula for the all-projection LoRA count: r * sum(in + out) per layer, times layers.
    h, kv = config["hidden_size"], config["num_key_value_heads"] * (
        config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    )
    per_layer = (h + h) + 2 * (h + kv) + (h + h) + 3 * (h + config["intermediate_size"])
    assert trainable == 16 * per_layer * config["num_hidden_layers"]
