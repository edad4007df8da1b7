"""Refusal-direction ablation: the projection, the hooks, the weight edit, the direction, the layer choice, the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_assets import tiny_qwen2

from ema_lightning.ablation import LayerScore, candidate_layers, choose_layer, directions, prompt_groups, split_selection
from ema_lightning.cli import main
from ema_lightning.data.records import Record
from ema_lightning.layers import DirectionalAblation, orthogonalize_weights, project_out

VOCAB = 40


def _mistral(seed: int = 0):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return MistralForCausalLM(config).eval()


def _models():
    return [("qwen2 tied", tiny_qwen2(VOCAB, tie_word_embeddings=True)), ("qwen2", tiny_qwen2(VOCAB)),
            ("mistral", _mistral())]


def _direction(seed: int = 1, hidden: int = 32) -> torch.Tensor:
    return torch.randn(hidden, generator=torch.Generator().manual_seed(seed))


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(2))


def test_project_out_removes_the_component_and_keeps_the_rest():
    r = torch.tensor([0.6, 0.8, 0.0])
    x = torch.tensor([[1.0, 2.0, 3.0]])
    out = project_out(x, r)
    # hand computation: x.r = 0.6 + 1.6 = 2.2; x - 2.2 r = (1 - 1.32, 2 - 1.76, 3)
    assert torch.allclose(out, torch.tensor([[-0.32, 0.24, 3.0]]), atol=1e-6)
    assert float(out @ r) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("index", range(3), ids=["qwen2 tied", "qwen2", "mistral"])
def test_hooks_keep_the_direction_out_of_every_layer_and_come_off(index):
    _, model = _models()[index]
    r = _direction()
    before = model(_ids()).logits
    with DirectionalAblation(model, r) as ablation:
        out = model(_ids(), output_hidden_states=True)
        assert ablation.installed
    unit = r / r.norm()
    for layer, hidden in enumerate(out.hidden_states[:-1]):  # the last entry is after the final norm
        assert (hidden @ unit).abs().max() < 1e-4, f"layer {layer} still carries the direction"
    assert not torch.allclose(out.logits, before)
    assert torch.equal(model(_ids()).logits, before)  # removed: the model is as it was


@pytest.mark.parametrize("index", range(3), ids=["qwen2 tied", "qwen2", "mistral"])
def test_orthogonalised_weights_compute_what_the_hooks_do(index):
    _, model = _models()[index]
    r = _direction()
    with DirectionalAblation(model, r):
        hooked = model(_ids()).logits
    edited = orthogonalize_weights(model, r)
    assert torch.allclose(edited(_ids()).logits, hooked, atol=1e-5)
    assert edited.get_output_embeddings().weight is not edited.get_input_embeddings().weight


def test_orthogonalised_model_saves_and_loads_untied(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_qwen2(VOCAB, tie_word_embeddings=True)
    r = _direction()
    edited = orthogonalize_weights(model, r)
    expected = edited(_ids()).logits
    edited.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(loaded(_ids()).logits, expected, atol=1e-5)


def test_refusal_direction_is_the_unit_difference_of_means():
    harmful = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]]])  # (n=2, L=1, H=2): mean (2, 0)
    harmless = torch.tensor([[[0.0, 1.0]], [[0.0, 3.0]]])  # mean (0, 2)
    got = directions("refusal", harmful, harmless)
    assert torch.allclose(got, torch.tensor([[2.0, -2.0]]) / 8 ** 0.5)


def test_domain_direction_has_the_global_refusal_direction_projected_out():
    harmful = torch.tensor([[[2.0, 0.0, 0.0]]])
    harmless = torch.tensor([[[0.0, 0.0, 0.0]]])  # global refusal direction: (1, 0, 0)
    target_harmful = torch.tensor([[[3.0, 4.0, 0.0]]])
    target_harmless = torch.tensor([[[0.0, 0.0, 0.0]]])  # own direction (3, 4, 0): minus its x part -> (0, 1, 0)
    got = directions("domain", harmful, harmless, target_harmful, target_harmless)
    assert torch.allclose(got, torch.tensor([[[0.0, 1.0, 0.0]]])[0])
    with pytest.raises(ValueError, match="target domain"):
        directions("domain", harmful, harmless)


def test_candidate_layers_stop_at_the_depth_fraction_and_before_the_final_norm():
    assert candidate_layers(2, 0.8) == [1]
    assert candidate_layers(32, 0.8) == list(range(1, 26))  # floor(25.6)
    assert candidate_layers(30, 1.0) == list(range(1, 30))  # never index 30: after the final norm
    with pytest.raises(ValueError, match="max_layer_fraction"):
        candidate_layers(30, 0.0)


def test_choose_layer_takes_the_lowest_refusal_among_layers_within_the_kl_bound():
    scores = [LayerScore(1, -1.0, 0.05), LayerScore(2, -3.0, 0.5), LayerScore(3, -2.0, 0.09)]
    assert choose_layer(scores, 0.1) == (scores[2], True)  # layer 2 is lower but breaks harmless prompts
    assert choose_layer(scores, 0.01) == (scores[1], False)  # none passes: the lowest, flagged


def test_split_selection_holds_out_one_in_k_per_domain_and_harmful_flag():
    records = [Record(f"p{d}{h}{i}", d, h, "r") for d in ("cybersecurity", "safety") for h in (True, False) for i in range(8)]
    fit, held_out = split_selection(records, 4)
    assert len(held_out) == 8 and len(fit) == 24
    assert {(r.domain, r.harmful) for r in held_out} == {(r.domain, r.harmful) for r in records}
    assert not {r.prompt for r in fit} & {r.prompt for r in held_out}



def test_prompt_groups_hold_out_the_same_share_of_neutral_prompts_and_keep_the_target_apart():
    records = [Record(f"p{d}{h}{i}", d, h, "r") for d in ("cybersecurity", "safety") for h in (True, False) for i in range(4)]
    neutral = [Record(f"n{i}", "neutral", False, "r") for i in range(8)]
    groups, selection = prompt_groups("domain", "safety", records, neutral, 4)
    assert groups["harmful"] == [f"p{d}True{i}" for d in ("cybersecurity", "safety") for i in range(3)]
    assert groups["harmless"] == [f"p{d}False{i}" for d in ("cybersecurity", "safety") for i in range(3)] + \
        [f"n{i}" for i in (0, 1, 2, 4, 5, 6)]
    assert groups["target_harmful"] == ["psafetyTrue0", "psafetyTrue1", "psafetyTrue2"]
    assert groups["target_harmless"] == ["psafetyFalse0", "psafetyFalse1", "psafetyFalse2"]  # its own look-alikes
    assert selection == {"harmful": ["psafetyTrue3"], "harmless": ["pcybersecurityFalse3", "psafetyFalse3", "n3", "n7"]}
    refusal, _ = prompt_groups("refusal", None, records, neutral, 4)
    assert set(refusal) == {"harmful", "harmless"}

FAST = ["--data.eval_per_domain=2", "--data.retain_size=16"]


def test_ablate_runs_on_the_tiny_config_and_exports_the_edited_model(in_repo, tmp_path):
    cli = main(["ablate", "--config", "configs/tiny_cpu.yaml", "--config", "configs/ablation/domain_safety.yaml", *FAST,
                "--model.init_args.export=merged", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    module = cli.model
    assert module.method == "domain_ablation" and module.target_domain == "safety"
    assert [(e.stage, e.step) for e in module.evaluations] == [("baseline", 0), ("val", 1)]
    assert module.evaluations[1].utility_nll is not None
    run = Path(cli.trainer.log_dir)
    selection = json.loads((run / "ablation" / "selection.json").read_text())
    assert selection["kind"] == "domain" and selection["layer"] == 1 and selection["candidates"][0]["chosen"]
    assert (run / "export" / "model" / "model.safetensors").is_file()


def test_ablate_refuses_a_model_that_is_no_ablation(in_repo, tmp_path):
    with pytest.raises(ValueError, match="configs/ablation/refusal_direction.yaml"):
        main(["ablate", "--config", "configs/tiny_cpu.yaml", f"--trainer.logger.init_args.save_dir={tmp_path}"])


def test_backbone_adapter_continues_a_saved_adapter_trainable(tmp_path):
    from tiny_assets import tiny_qwen2_config

    from ema_lightning.backbone import Backbone, LoraSettings, load_model

    lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    first = load_model(Backbone(tiny=tiny_qwen2_config(vocab_size=VOCAB), lora=lora))
    with torch.no_grad():
        for name, p in first.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)  # a trained adapter: B is no longer zero
    first.save_pretrained(tmp_path / "adapter")
    expected = first(_ids()).logits
    torch.manual_seed(0)  # the same random base
    again = load_model(Backbone(tiny=tiny_qwen2_config(vocab_size=VOCAB), lora=lora, adapter=str(tmp_path / "adapter")))
    assert torch.allclose(again(_ids()).logits, expected, atol=1e-6)
    trainable = {n for n, p in again.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="adapter_config.json"):
        Backbone(tiny=tiny_qwen2_config(vocab_size=VOCAB), lora=lora, adapter=str(tmp_path))
