"""The 7B presets at full size on the meta device (shapes only, no memory, no weights): the LoRA of
configs/models/*.yaml gives the trainable count of the LoRA formula, and the FSDP preset's wrap policy
resolves to each architecture's decoder-layer class.

No hub access: the architectures are their published config.json values (hidden size, layers, heads,
vocabulary), given as `tiny` settings to `build_meta_model`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from ema_lightning.backbone import Backbone, LoraSettings, build_meta_model, count_parameters

ROOT = Path(__file__).resolve().parents[2]

# Published config.json values of the two checkpoints.
ARCHITECTURES = {
    "configs/models/qwen2.5-7b-instruct.yaml": {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
    },
    "configs/models/mistral-7b-instruct-v0.3.yaml": {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32768, "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
    },
}
# Parameter counts of the published checkpoints (model cards: 7.62B and 7.25B).
FULL_SIZE = {"qwen2": (7.55e9, 7.70e9), "mistral": (7.20e9, 7.30e9)}


def _lora_formula(arch: dict, lora: dict) -> int:
    """r x (in + out) per adapted projection, summed over the decoder layers."""
    hidden, inner = arch["hidden_size"], arch["intermediate_size"]
    kv = arch["num_key_value_heads"] * hidden // arch["num_attention_heads"]
    shapes = {
        "q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
        "gate_proj": (hidden, inner), "up_proj": (hidden, inner), "down_proj": (inner, hidden),
    }
    per_layer = sum(lora["r"] * sum(shapes[name]) for name in lora["target_modules"])
    return per_layer * arch["num_hidden_layers"]


def _preset(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())["model"]["init_args"]["backbone"]


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES), ids=lambda p: Path(p).stem)
def meta_model(request):
    path = request.param
    lora = _preset(path)["lora"]
    backbone = Backbone(tiny=dict(ARCHITECTURES[path]), lora=LoraSettings(**lora))
    return path, build_meta_model(backbone)


def test_trainable_parameters_follow_the_lora_formula(meta_model):
    path, model = meta_model
    arch, lora = ARCHITECTURES[path], _preset(path)["lora"]
    trainable, total = count_parameters(model)
    assert trainable == _lora_formula(arch, lora)
    low, high = FULL_SIZE[arch["model_type"]]
    assert low < total - trainable < high  # the frozen base is the published 7B model
    assert all(p.is_meta for p in model.parameters())


def test_fsdp_wrap_policy_resolves_to_the_decoder_layer(meta_model):
    path, model = meta_model
    strategy = yaml.safe_load((ROOT / "configs/strategies/fsdp.yaml").read_text())["trainer"]["strategy"]["init_args"]
    for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
        classes = set()
        for name in strategy[key]:
            module, _, attribute = name.rpartition(".")
            classes.add(getattr(importlib.import_module(module), attribute))
        wrapped = [m for m in model.modules() if isinstance(m, tuple(classes))]
        assert len(wrapped) == ARCHITECTURES[path]["num_hidden_layers"], key
        assert {type(m).__name__ for m in wrapped} == {f"{ARCHITECTURES[path]['model_type'].capitalize()}DecoderLayer"}
