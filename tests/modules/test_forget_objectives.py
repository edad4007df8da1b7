"""SimNPO, DPO and RMU: each loss against a hand computation, and their glue in RefusalUnlearningModule
(RMU's hook reads the layer asked for; no second model copy under LoRA; DPO's rejected side is cached)."""

import math

import pytest
import torch
from tiny_assets import WORD_CHAT_TEMPLATE, tiny_qwen2_config, word_level_tokenizer

from ema_lightning.backbone import Backbone, LoraSettings
from ema_lightning.data.collate import prompt_rows
from ema_lightning.modules import RefusalUnlearningModule
from ema_lightning.objectives import (
    activation_mse,
    dpo_loss,
    random_unit_vector,
    sequence_log_probs,
    simnpo_loss,
    token_log_probs,
)

VOCAB = 64
TINY = tiny_qwen2_config(vocab_size=VOCAB, max_position_embeddings=64)
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------------ SimNPO
def test_simnpo_matches_hand_computation():
    logps, lengths, beta, delta = torch.tensor([-6.0, -2.0]), torch.tensor([3, 4]), 2.0, 0.5
    # -(2 / beta) * logsigmoid(x) = (2 / beta) * log(1 + exp(-x)), x = beta * (-logp / |y| - delta)
    hand = [(2 / beta) * _softplus(-beta * (6.0 / 3 - delta)), (2 / beta) * _softplus(-beta * (2.0 / 4 - delta))]
    assert simnpo_loss(logps, lengths, beta, delta).item() == pytest.approx(sum(hand) / 2, abs=1e-6)


def test_simnpo_normalises_by_response_length():
    summed = torch.tensor([-6.0])
    short, long = simnpo_loss(summed, torch.tensor([2]), beta=1.0), simnpo_loss(summed, torch.tensor([6]), beta=1.0)
    assert short.item() == pytest.approx(2 * _softplus(-3.0), abs=1e-6)  # mean NLL 3 nats
    assert long.item() == pytest.approx(2 * _softplus(-1.0), abs=1e-6)  # mean NLL 1 nat
    assert long.item() > short.item()  # the same summed log-prob is a likelier answer over more tokens


def test_simnpo_on_logits_counts_only_response_tokens():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    log_probs, mask = token_log_probs(logits, labels)
    assert mask.sum(-1).tolist() == [3, 2]
    value = simnpo_loss(log_probs.sum(-1), mask.sum(-1), beta=1.0)
    rows = [2 * _softplus(-(-log_probs[b].sum().item() / n)) for b, n in enumerate([3, 2])]
    assert value.item() == pytest.approx(sum(rows) / 2, abs=1e-5)


def test_simnpo_rejects_non_positive_beta():
    with pytest.raises(ValueError, match="beta"):
        simnpo_loss(torch.zeros(1), torch.ones(1), beta=0.0)


# --------------------------------------------------------------------------------------------- DPO
def test_dpo_matches_hand_computation():
    chosen, rejected = torch.tensor([-4.0, -10.0]), torch.tensor([-3.0, -2.0])
    ref_chosen, ref_rejected = torch.tensor([-5.0, -9.0]), torch.tensor([-3.5, -4.0])
    beta = 0.5
    margins = [(-4.0 + 5.0) - (-3.0 + 3.5), (-10.0 + 9.0) - (-2.0 + 4.0)]  # 0.5, -3.0
    hand = sum(_softplus(-beta * m) for m in margins) / 2  # -logsigmoid(z) = log(1 + exp(-z))
    assert dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta).item() == pytest.approx(hand, abs=1e-6)


def test_dpo_is_log_two_at_the_reference_and_pushes_chosen_up_rejected_down():
    chosen = torch.tensor([-4.0], requires_grad=True)
    rejected = torch.tensor([-3.0], requires_grad=True)
    loss = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.05, abs=1e-6)  # -beta * sigmoid(0)
    assert rejected.grad.item() == pytest.approx(0.05, abs=1e-6)


# --------------------------------------------------------------------------------------------- RMU
def test_activation_mse_matches_hand_computation_and_skips_padding():
    activations = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    target = torch.tensor([0.5, 1.0])
    # token 0: ((0.5)^2 + 1^2) / 2 = 0.625; token 1: ((2.5)^2 + (-2)^2) / 2 = 5.125; token 2 is padding
    assert activation_mse(activations, target, mask).item() == pytest.approx((0.625 + 5.125) / 2, abs=1e-6)
    reference = torch.zeros_like(activations)
    # against a per-token target: (1 + 4) / 2 = 2.5 and (9 + 1) / 2 = 5
    assert activation_mse(activations, reference, mask).item() == pytest.approx(3.75, abs=1e-6)


def test_random_unit_vector_is_unit_norm_and_seeded():
    u = random_unit_vector(16, seed=3)
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert (u >= 0).all()  # WMDP draws torch.rand: the direction lies in the positive orthant
    assert torch.equal(u, random_unit_vector(16, seed=3))
    assert not torch.equal(u, random_unit_vector(16, seed=4))


def _batch(seed: int, n: int = 4, length: int = 10, prompt: int = 5, pad: int = 2) -> dict[str, torch.Tensor]:
    """Right-padded rows: `prompt` prompt tokens, the rest response, the last row `pad` padding tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, length - pad:] = 0
    labels = ids.clone()
    labels[:, :prompt] = -100
    labels[mask == 0] = -100
    ids[mask == 0] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": torch.arange(n),
            "domain_ids": torch.zeros(n, dtype=torch.long)}


def _rmu(layer: int, **kwargs) -> RefusalUnlearningModule:
    torch.manual_seed(0)
    module = RefusalUnlearningModule(Backbone(tiny=TINY, lora=LORA), forget_objective="rmu", rmu_layer=layer, **kwargs)
    module.configure_model()
    return module


@pytest.mark.parametrize("layer", [0, 1, -1, -2])
def test_rmu_hook_reads_the_layer_asked_for(layer):
    module = _rmu(layer)
    batch = _batch(0)
    with torch.no_grad():
        _, hidden = module.hidden_states(module.model, batch)
        states = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              output_hidden_states=True).hidden_states
    index = layer % TINY["num_hidden_layers"]
    if index + 1 < TINY["num_hidden_layers"]:
        # hidden_states[l + 1] is the output of decoder layer l (all but the last layer)
        torch.testing.assert_close(hidden, states[index + 1])
    else:  # transformers' last entry is after the final norm
        torch.testing.assert_close(module.model.get_base_model().model.norm(hidden), states[-1])
    for other in range(1, TINY["num_hidden_layers"]):
        if other != index + 1 and other < TINY["num_hidden_layers"]:
            assert not torch.allclose(hidden, states[other])


def test_rmu_out_of_range_layer_fails_when_the_model_is_built():
    with pytest.raises(ValueError, match="rmu_layer=7"):
        _rmu(7)


def test_rmu_training_step_is_the_hand_computed_activation_losses():
    module = _rmu(0, alpha=3.0, steering_coeff=5.0, rmu_seed=1)
    forget, retain = _batch(1), _batch(2)
    control = 5.0 * random_unit_vector(TINY["hidden_size"], 1)
    torch.testing.assert_close(module.control_vector, control)
    loss = module.training_step({"forget": forget, "retain": retain}, 0)
    with torch.no_grad():
        def layer0(batch):
            return module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                output_hidden_states=True).hidden_states[1]

        def by_loops(hidden, target, mask):
            values = [((hidden[b, t] - target[b, t] if target.dim() == 3 else hidden[b, t] - target) ** 2).mean().item()
                      for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]
            return sum(values) / len(values)

        forget_term = by_loops(layer0(forget), control, forget["attention_mask"])
        with module.model.disable_adapter():
            reference = layer0(retain)
        retain_term = by_loops(layer0(retain), reference, retain["attention_mask"])
    # LoRA starts at the base: the retain term is 0 at step 0, the loss the forget term
    assert retain_term == pytest.approx(0.0, abs=1e-10)
    assert loss.item() == pytest.approx(forget_term + 3.0 * retain_term, rel=1e-5)


def test_rmu_lowers_its_forget_loss_and_keeps_the_control_vector_in_checkpoints():
    module = _rmu(-1, alpha=1.0)
    forget, retain = _batch(1), _batch(2)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(15):
        loss = module.training_step({"forget": forget, "retain": retain}, 0)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    restored = RefusalUnlearningModule(Backbone(tiny=TINY, lora=LORA), forget_objective="rmu", rmu_layer=-1)
    restored.on_load_checkpoint(checkpoint)
    torch.testing.assert_close(restored.control_vector, module.control_vector)


# -------------------------------------------------------------------------- reference and model copies
@pytest.mark.parametrize("kwargs, needs", [
    ({"forget_objective": "simnpo"}, False),
    ({"forget_objective": "simnpo", "retain_kl": 1.0}, True),
    ({"forget_objective": "npo"}, True),
    ({"forget_objective": "dpo"}, True),
    ({"forget_objective": "dpo", "gamma": 0.0, "alpha": 1.0}, False),
    ({"forget_objective": "rmu", "alpha": 100.0}, True),
    ({"forget_objective": "rmu", "alpha": 0.0}, False),
])
def test_needs_reference_per_objective(kwargs, needs):
    assert RefusalUnlearningModule(Backbone(tiny=TINY), **kwargs).needs_reference is needs


def _parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("objective", ["rmu", "dpo", "simnpo"])
def test_no_second_model_copy_under_lora(objective):
    module = RefusalUnlearningModule(Backbone(tiny=TINY, lora=LORA), forget_objective=objective, alpha=100.0, rmu_layer=-1)
    module.configure_model()
    assert module.reference_model is None
    # every parameter the module holds is the model's: no frozen copy beside it
    assert _parameter_count(module) == _parameter_count(module.model)
    full = RefusalUnlearningModule(Backbone(tiny=TINY), forget_objective=objective, alpha=100.0, rmu_layer=-1)
    full.configure_model()
    if full.needs_reference:  # full fine-tuning has no adapters to disable: it keeps one frozen copy
        assert _parameter_count(full) == 2 * _parameter_count(full.model)


# --------------------------------------------------------------------------------------------- DPO glue
WORDS = [f"w{i}" for i in range(VOCAB - 4 - 3)] + ["user", "assistant", "system"]


def _dpo(**kwargs) -> RefusalUnlearningModule:
    torch.manual_seed(0)
    module = RefusalUnlearningModule(Backbone(tiny=TINY, lora=LORA), forget_objective="dpo", max_new_tokens=4, **kwargs)
    module._tokenizer = word_level_tokenizer(WORDS, chat_template=WORD_CHAT_TEMPLATE)
    assert len(module._tokenizer) == VOCAB
    module.configure_model()
    return module


def test_prompt_rows_are_the_tokens_before_the_first_label():
    batch = _batch(0, n=2, prompt=3)
    batch["labels"][1, 3] = -100  # a row whose response starts later
    assert prompt_rows(batch) == [batch["input_ids"][0, :3].tolist(), batch["input_ids"][1, :4].tolist()]


def test_dpo_rejected_side_is_generated_once_by_the_reference_and_starts_at_log_two():
    module = _dpo()
    forget = _batch(3)
    calls = []
    original = module.reference_policy
    module.reference_policy = lambda: calls.append(1) or original()
    rejected, reference = module.rejected_batch(forget)
    assert len(calls) == 2  # one generation and one reference forward, for all rows at once
    prompts = prompt_rows(forget)
    for row, prompt in enumerate(prompts):
        length = int(rejected["attention_mask"][row].sum())
        assert rejected["input_ids"][row, :len(prompt)].tolist() == prompt
        assert 1 <= length - len(prompt) <= 4  # at most max_new_tokens response tokens, all scored
        assert (rejected["labels"][row, len(prompt):length] != -100).all()
    with torch.no_grad(), module.model.disable_adapter():
        hand = sequence_log_probs(module.model(input_ids=rejected["input_ids"], attention_mask=rejected["attention_mask"]).logits,
                                  rejected["labels"])
    torch.testing.assert_close(reference, hand)
    _, reference_again = module.rejected_batch({k: v[:2] for k, v in forget.items()})
    assert len(calls) == 2  # cached by example index
    torch.testing.assert_close(reference_again, reference[:2])
    # LoRA starts at the base: policy == reference, so the DPO loss is log 2
    loss = module.training_step({"forget": forget}, 0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


def test_dpo_raises_the_chosen_over_the_rejected_and_checkpoints_its_cache():
    module = _dpo()
    forget = _batch(3)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(10):
        loss = module.training_step({"forget": forget}, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < math.log(2) - 0.1
    assert module.reference_model is None and _parameter_count(module) == _parameter_count(module.model)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    restored = RefusalUnlearningModule(Backbone(tiny=TINY, lora=LORA), forget_objective="dpo")
    restored.on_load_checkpoint(checkpoint)
    assert restored._rejected == module._rejected
    assert restored._rejected_reference == pytest.approx(module._rejected_reference)


def test_rmu_forget_loss_has_gradients_under_gradient_checkpointing():
    torch.manual_seed(0)
    module = RefusalUnlearningModule(Backbone(tiny=TINY, lora=LORA, gradient_checkpointing=True),
                                     forget_objective="rmu", rmu_layer=0)
    module.configure_model()
    module.train()
    module.training_step({"forget": _batch(1)}, 0).backward()
    grads = [p.grad for name, p in module.model.named_parameters() if p.requires_grad and "layers.0." in name]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
