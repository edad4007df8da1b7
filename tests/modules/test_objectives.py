"""Objectives against hand computations on tiny tensors (explicit loops are the reference)."""

import math

import pytest
import torch

from ema_lightning.objectives import (
    cross_entropy_loss,
    gradient_ascent_loss,
    kl_to_reference,
    npo_loss,
    sequence_log_probs,
    token_log_probs,
)


def _example(seed=0, batch=3, length=5, vocab=7):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=generator)
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[0, :2] = -100  # prompt
    labels[1, -1] = -100  # padding
    labels[2, :] = -100  # nothing scored in this row
    labels[2, 3] = 4  # ... except one token
    return logits, labels


def _hand_token_log_probs(logits, labels):
    """Dict (b, t) -> log p(labels[b, t]) from logits[b, t - 1], by explicit loops."""
    out = {}
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[b, t] == -100:
                continue
            row = logits[b, t - 1].double()
            out[(b, t)] = (row[labels[b, t]] - torch.log(torch.exp(row).sum())).item()
    return out


def test_sequence_log_probs_matches_hand_sum_and_mean():
    logits, labels = _example()
    hand = _hand_token_log_probs(logits, labels)
    sums = sequence_log_probs(logits, labels, reduction="sum")
    means = sequence_log_probs(logits, labels, reduction="mean")
    assert sums.shape == (3,) and sums.dtype == torch.float32
    for b in range(3):
        values = [v for (bb, _), v in hand.items() if bb == b]
        assert sums[b].item() == pytest.approx(sum(values), abs=1e-5)
        assert means[b].item() == pytest.approx(sum(values) / len(values), abs=1e-5)


def test_label_at_position_zero_is_never_scored():
    logits, labels = _example()
    labels_with_first = labels.clone()
    labels_with_first[:, 0] = 3
    labels_without_first = labels.clone()
    labels_without_first[:, 0] = -100
    assert torch.equal(
        sequence_log_probs(logits, labels_with_first), sequence_log_probs(logits, labels_without_first)
    )


def test_masked_positions_do_not_affect_result_or_gradient():
    logits, labels = _example()
    logits = logits.clone().requires_grad_(True)
    sequence_log_probs(logits, labels).sum().backward()
    # Row 0: labels[0, :2] ignored, so logits[0, 0] (predicts labels[0, 1]) gets no gradient.
    assert torch.all(logits.grad[0, 0] == 0)
    # The last position predicts nothing.
    assert torch.all(logits.grad[:, -1] == 0)
    changed = logits.detach().clone()
    changed[0, 0] += 100.0
    assert torch.allclose(sequence_log_probs(changed, labels), sequence_log_probs(logits.detach(), labels))


def test_sequence_without_scored_tokens_gives_zero():
    logits = torch.randn(2, 4, 5)
    labels = torch.full((2, 4), -100)
    assert torch.equal(sequence_log_probs(logits, labels, "mean"), torch.zeros(2))
    assert torch.equal(sequence_log_probs(logits, labels, "sum"), torch.zeros(2))
    loss = cross_entropy_loss(logits.requires_grad_(True), labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_bad_reduction_and_shapes_raise():
    logits, labels = _example()
    with pytest.raises(ValueError, match="reduction"):
        sequence_log_probs(logits, labels, reduction="max")
    with pytest.raises(ValueError, match="labels"):
        sequence_log_probs(logits, labels[:, :-1])


def test_cross_entropy_is_token_mean_and_matches_torch():
    logits, labels = _example()
    hand = _hand_token_log_probs(logits, labels)
    expected = -sum(hand.values()) / len(hand)
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(expected, abs=1e-5)
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(cross_entropy_loss(logits, labels), reference)


def test_gradient_ascent_is_negative_cross_entropy():
    logits, labels = _example()
    torch.testing.assert_close(gradient_ascent_loss(logits, labels), -cross_entropy_loss(logits, labels))


def test_npo_matches_formula_by_hand():
    policy = torch.tensor([-3.0, -10.0, -1.5])
    reference = torch.tensor([-2.0, -12.0, -1.5])
    beta = 0.5
    expected = sum(
        -(2 / beta) * math.log(1 / (1 + math.exp(beta * (p - r)))) for p, r in zip(policy.tolist(), reference.tolist())
    ) / 3
    assert npo_loss(policy, reference, beta).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0, 3.0])
def test_npo_at_reference_equals_two_over_beta_log_two(beta):
    logps = torch.tensor([-5.0, -1.0, -20.0])
    assert npo_loss(logps, logps.clone(), beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan")])
def test_npo_rejects_non_positive_beta(beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        npo_loss(torch.zeros(2), torch.zeros(2), beta)


def test_npo_does_not_backpropagate_into_reference():
    policy = torch.tensor([-3.0, -2.0], requires_grad=True)
    reference = torch.tensor([-2.5, -2.5], requires_grad=True)
    npo_loss(policy, reference).backward()
    assert reference.grad is None and policy.grad is not None


def test_npo_approaches_gradient_ascent_as_beta_goes_to_zero():
    """At policy == reference the NPO gradient equals the GA gradient on mean_i sum log p; near it, for small beta, close."""
    logits, labels = _example(seed=1)
    reference_logps = sequence_log_probs(logits, labels).detach()

    def gradient(loss_fn):
        parameter = logits.clone().requires_grad_(True)
        loss_fn(parameter).backward()
        return parameter.grad

    ascent = gradient(lambda p: sequence_log_probs(p, labels).mean())
    at_reference = gradient(lambda p: npo_loss(sequence_log_probs(p, labels), reference_logps, beta=0.1))
    torch.testing.assert_close(at_reference, ascent)
    # Away from the reference the weight 2 * sigmoid(beta * delta) -> 1 as beta -> 0.
    shifted_reference = reference_logps + 3.0
    errors = []
    for beta in (1.0, 0.1, 0.001):
        npo = gradient(lambda p: npo_loss(sequence_log_probs(p, labels), shifted_reference, beta=beta))
        errors.append((npo - ascent).abs().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3


@pytest.mark.parametrize("objective", ["npo", "gradient_ascent"])
def test_one_sgd_step_lowers_forget_log_prob(objective):
    logits, labels = _example(seed=2)
    parameter = torch.nn.Parameter(logits.clone())
    reference_logps = sequence_log_probs(logits, labels).detach()
    before = sequence_log_probs(parameter, labels).detach()
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    if objective == "npo":
        loss = npo_loss(sequence_log_probs(parameter, labels), reference_logps, beta=0.1)
    else:
        loss = gradient_ascent_loss(parameter, labels)
    loss.backward()
    optimizer.step()
    after = sequence_log_probs(parameter, labels).detach()
    assert torch.all(after < before)


def test_kl_to_reference_matches_hand_and_is_zero_at_reference():
    policy, labels = _example(seed=3)
    reference = torch.randn_like(policy)
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[b, t] == -100:
                continue
            p_ref = torch.softmax(reference[b, t - 1].double(), -1)
            p_pol = torch.softmax(policy[b, t - 1].double(), -1)
            total += (p_ref * (p_ref.log() - p_pol.log())).sum().item()
            count += 1
    assert kl_to_reference(policy, reference, labels).item() == pytest.approx(total / count, abs=1e-5)
    assert kl_to_reference(policy, policy.clone(), labels).item() == pytest.approx(0.0, abs=1e-6)
    # Masked positions do not matter.
    changed = reference.clone()
    changed[0, 0] += 50.0
    torch.testing.assert_close(kl_to_reference(policy, changed, labels), kl_to_reference(policy, reference, labels))


def test_kl_gradient_flows_only_to_policy():
    policy, labels = _example(seed=4)
    policy.requires_grad_(True)
    reference = torch.randn_like(policy).requires_grad_(True)
    kl_to_reference(policy, reference, labels).backward()
    assert reference.grad is None and policy.grad.abs().sum() > 0


def test_bfloat16_logits_give_float32_results_close_to_float32():
    logits, labels = _example(seed=5, vocab=50)
    low = logits.to(torch.bfloat16)
    exact = low.float()
    for fn in (cross_entropy_loss, gradient_ascent_loss):
        result = fn(low, labels)
        assert result.dtype == torch.float32
        torch.testing.assert_close(result, fn(exact, labels))
    result = sequence_log_probs(low, labels)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, sequence_log_probs(exact, labels))
    torch.testing.assert_close(kl_to_reference(low, low * 0.5, labels), kl_to_reference(exact, exact * 0.5, labels))
    bf16_parameter = low.clone().requires_grad_(True)
    sequence_log_probs(bf16_parameter, labels).sum().backward()
    assert bf16_parameter.grad.dtype == torch.bfloat16


def test_token_log_probs_shape_and_mask():
    logits, labels = _example()
    log_probs, mask = token_log_probs(logits, labels)
    assert log_probs.shape == mask.shape == (3, 4)
    assert torch.equal(mask, labels[:, 1:] != -100)
    assert torch.all(log_probs[~mask] == 0) and torch.all(log_probs[mask] < 0)
