"""RefusalUnlearningModule: NPO lowers the forget log-probs; retain CE contains the damage."""

import copy

import pytest
import torch

from tiny_assets import tiny_qwen2_config

from ema_lightning.backbone import Backbone, LoraSettings
from ema_lightning.modules import RefusalUnlearningModule
from ema_lightning.objectives import cross_entropy_loss, sequence_log_probs

TINY = tiny_qwen2_config(vocab_size=64, max_position_embeddings=64)
RETAIN_BOUND = 0.15  # nats: how far the retain loss may rise under NPO + retain CE


def _batch(seed: int, n: int = 8, length: int = 12, prompt: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 64, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "index": torch.arange(n), "domain_ids": torch.zeros(n, dtype=torch.long)}


@pytest.fixture(scope="module")
def fitted_base():
    """A tiny model fitted on both sets (an 'aligned' model that knows its forget and retain answers)."""
    torch.manual_seed(0)
    module = RefusalUnlearningModule(Backbone(tiny=TINY), alpha=1.0)
    module.configure_model()
    forget, retain = _batch(1), _batch(2)
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = sum(cross_entropy_loss(module(b["input_ids"], b["attention_mask"]), b["labels"]) for b in (forget, retain))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module.model.state_dict(), forget, retain


def _unlearn(fitted_base, alpha: float, steps: int = 25):
    state, forget, retain = fitted_base
    torch.manual_seed(0)
    module = RefusalUnlearningModule(Backbone(tiny=TINY, lora=LoraSettings(r=8, alpha=16, dropout=0.0)), alpha=alpha)
    module.configure_model()
    module.model.get_base_model().load_state_dict(state, strict=False)
    base_keys = {k.replace(".base_layer.", ".") for k in module.model.get_base_model().state_dict() if "lora_" not in k}
    assert base_keys == set(state)

    def measure():
        with torch.no_grad():
            logp = sequence_log_probs(module(forget["input_ids"], forget["attention_mask"]), forget["labels"])
            retain_loss = cross_entropy_loss(module(retain["input_ids"], retain["attention_mask"]), retain["labels"])
        return logp, float(retain_loss)

    logp0, retain0 = measure()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = module.training_step({"forget": forget, "retain": retain}, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    logp, retain_loss = measure()
    reference = module.reference_log_probs(forget)
    return logp0, retain0, logp, retain_loss, reference


def test_npo_lowers_forget_log_probs_below_the_reference(fitted_base):
    logp0, _, logp, _, reference = _unlearn(fitted_base, alpha=0.0)
    torch.testing.assert_close(reference, logp0, atol=1e-4, rtol=1e-4)  # reference = adapters off = start
    assert (logp < reference - 5.0).all()


def test_retain_ce_keeps_the_retain_loss_within_bound(fitted_base):
    _, retain0, _, retain_free, _ = _unlearn(fitted_base, alpha=0.0)
    _, retain0_c, logp, retain_contained, reference = _unlearn(fitted_base, alpha=1.0)
    assert retain_free > retain0 + 1.0  # without containment the retain answers are damaged too
    assert retain_contained <= retain0_c + RETAIN_BOUND
    assert (logp < reference - 5.0).all()  # and the forget answers are still unlearned


def test_reference_log_probs_are_computed_once_per_example(fitted_base):
    state, forget, _ = fitted_base
    module = RefusalUnlearningModule(Backbone(tiny=TINY, lora=LoraSettings(r=4, alpha=8, dropout=0.0)))
    module.configure_model()
    calls = []
    original = module.reference_logits
    module.reference_logits = lambda batch: calls.append(batch["input_ids"].shape[0]) or original(batch)
    first = module.reference_log_probs(forget)
    half = {k: v[:4] for k, v in forget.items()}
    again = module.reference_log_probs(half)
    assert calls == [8]
    torch.testing.assert_close(again, first[:4])


def test_full_fine_tuning_keeps_a_frozen_reference_copy():
    module = RefusalUnlearningModule(Backbone(tiny=TINY))
    module.configure_model()
    assert module.reference_model is not None
    assert not any(p.requires_grad for p in module.reference_model.parameters())
    lora = RefusalUnlearningModule(Backbone(tiny=TINY, lora=LoraSettings(r=4)))
    lora.configure_model()
    assert lora.reference_model is None  # the base with adapters disabled is the reference


@pytest.mark.parametrize("kwargs, match", [({"beta": -1.0}, "beta"), ({"alpha": -0.5}, "alpha"),
                                           ({"forget_objective": "kto"}, "forget_objective"),
                                           ({"gamma": 0.0, "alpha": 0.0}, "nothing to train")])
def test_invalid_hyperparameters_fail_before_the_model_loads(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RefusalUnlearningModule(Backbone(tiny=TINY), **kwargs)


def test_non_finite_loss_names_term_and_step(fitted_base):
    _, forget, retain = fitted_base
    module = RefusalUnlearningModule(Backbone(tiny=TINY, lora=LoraSettings(r=4)), alpha=1.0)
    module.configure_model()
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_A" in name:
                p.fill_(float("nan"))
    before = copy.deepcopy(module.model.state_dict())
    assert any(torch.isnan(v).any() for v in before.values())  # the poison is in the state
    with pytest.raises(FloatingPointError, match=r"non-finite forget loss .* at step 0"):
        module.training_step({"forget": forget, "retain": retain}, 0)
    after = module.model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():  # the check only raises: no tensor changed (NaN equals NaN)
        assert torch.equal(torch.isnan(after[key]), torch.isnan(value)), key
        assert torch.equal(after[key].nan_to_num(), value.nan_to_num()), key
