"""Training objectives as pure tensor functions: log-probs, NPO, SimNPO, DPO, RMU, gradient ascent, cross-entropy, KL.

Conventions shared by every function here:

- ``logits`` (B, T, V) come from a causal LM run on ``input_ids`` (B, T); position ``t`` predicts
  token ``t + 1``. ``labels`` (B, T) are the ``input_ids`` with ``-100`` on ignored positions
  (prompt, padding). The shift happens inside: ``logits[:, :-1]`` is scored against ``labels[:, 1:]``.
- Arithmetic is float32 even for bf16/fp16 logits; results are float32.
- Token means are taken over all non-ignored positions of the batch (not a mean of per-sequence means).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (logits[:, :-1], safe targets, mask), targets with ignored positions set to 0."""
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T) with matching B, T; "
            f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    shifted_logits = logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return shifted_logits, targets.masked_fill(~mask, 0), mask


def response_window(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions whose logits the objectives read, and the labels in their coordinates: `(index, window)`, (B, W).

    Position `t` predicts label `t + 1`, so row `b` needs logits only from the position before its
    first scored label to the one before its last: `W` is the longest such span plus one (the last
    position, whose prediction the shift drops). With `logits[b, index[b]]` and `window` in place of
    `logits` and `labels`, every function here gives the same result, and the output head, the
    log-softmax and their backward run on (B, W, V) instead of (B, T, V): the prompt is the larger
    part of a training sequence. A row without scored labels gets an all-ignored window.
    """
    if labels.dim() != 2 or labels.shape[1] < 2:
        raise ValueError(f"expected labels (B, T) with T >= 2, got {tuple(labels.shape)}")
    batch, length = labels.shape
    scored = labels[:, 1:] != IGNORE_INDEX  # (B, T - 1): position t predicts labels[:, t + 1]
    positions = torch.arange(length - 1, device=labels.device).expand_as(scored)
    first = torch.where(scored, positions, length).amin(dim=1)
    last = torch.where(scored, positions, -1).amax(dim=1)
    present = scored.any(dim=1)
    first, last = first.where(present, 0), last.where(present, 0)
    width = int((last - first).max()) + 2 if batch else 2
    offsets = first.unsqueeze(1) + torch.arange(width - 1, device=labels.device)  # (B, W - 1) predicting positions
    index = torch.cat([offsets, offsets[:, -1:]], dim=1).clamp(max=length - 1)
    padded = torch.cat([labels, labels.new_full((batch, width), IGNORE_INDEX)], dim=1)
    window = torch.cat([labels.new_full((batch, 1), IGNORE_INDEX), padded.gather(1, offsets + 1)], dim=1)
    return index, window


def _logsumexp_float32(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the vocabulary in float32.

    float32 logits are reduced in place of a copy. Lower-precision logits are upcast one sequence
    at a time, so the forward pass never holds a second full (B, T, V) float32 tensor at once.
    """
    if logits.dtype == torch.float32:
        return torch.logsumexp(logits, dim=-1)
    return torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits.unbind(0)])


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label | prefix) and the mask of scored positions, both (B, T - 1).

    ``log p(y_t) = logits[t - 1, y_t] - logsumexp_v logits[t - 1, v]``: the label logit is gathered
    first, so no (B, T, V) log-softmax tensor is materialised. Ignored positions hold 0.
    """
    shifted_logits, targets, mask = _shift(logits, labels)
    label_logits = shifted_logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
    log_probs = label_logits - _logsumexp_float32(shifted_logits)
    return log_probs.masked_fill(~mask, 0.0), mask


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Log-probability of each sequence's response, (B,) float32.

    ``sum``: ``log p(y | x) = sum_t log p(y_t | x, y_<t)`` over non-ignored positions.
    ``mean``: the same sum divided by the number of response tokens (0 for a sequence with none).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    log_probs, mask = token_log_probs(logits, labels)
    total = log_probs.sum(dim=-1)
    if reduction == "sum":
        return total
    return total / mask.sum(dim=-1).clamp(min=1)


def npo_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Negative Preference Optimization loss (Zhang et al. 2024), a scalar.

    ``L = mean_i -(2 / beta) * logsigmoid(-beta * (log pi(y_i|x_i) - log pi_ref(y_i|x_i)))``.
    It equals ``(2 / beta) * log 2`` at ``pi == pi_ref``, its gradient pushes the policy log-prob
    down with weight ``2 * sigmoid(beta * delta)`` (bounded, unlike gradient ascent), and as
    ``beta -> 0`` it reduces to gradient ascent on the summed log-prob: ``mean_i log pi(y_i|x_i)``.
    """
    if not beta > 0:
        raise ValueError(f"npo beta must be > 0 (e.g. 0.1, the NPO paper's default), got {beta!r}")
    if policy_logps.shape != reference_logps.shape:
        raise ValueError(
            f"policy_logps {tuple(policy_logps.shape)} and reference_logps {tuple(reference_logps.shape)} "
            "must have the same shape (one log-prob per sequence)"
        )
    log_ratio = policy_logps.float() - reference_logps.float().detach()
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def simnpo_loss(policy_logps: torch.Tensor, lengths: torch.Tensor, beta: float = 1.0, delta: float = 0.0) -> torch.Tensor:
    """SimNPO loss (Fan et al. 2024, "Simplicity Prevails"), reference-free and length-normalised, a scalar.

    ``L = mean_i -(2 / beta) * logsigmoid(beta * (-log pi(y_i|x_i) / |y_i| - delta))``, ``|y_i|`` the
    number of response tokens. This is open-unlearning's form (``src/trainer/unlearn/simnpo.py``): the
    margin is called ``delta`` (``gamma`` is the forget weight there and here) and sits inside the
    ``beta`` factor, so the paper's margin ``gamma`` in ``-(beta / |y|) log pi - gamma`` is ``beta * delta``.
    A sequence without response tokens counts as length 1 (its log-prob is 0).
    """
    if not beta > 0:
        raise ValueError(f"simnpo beta must be > 0 (open-unlearning's default: 1.0), got {beta!r}")
    if policy_logps.shape != lengths.shape:
        raise ValueError(f"policy_logps {tuple(policy_logps.shape)} and lengths {tuple(lengths.shape)} must have the same shape")
    mean_nll = -policy_logps.float() / lengths.float().clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta)).mean()


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Direct Preference Optimization loss (Rafailov et al. 2023), a scalar.

    ``L = mean_i -logsigmoid(beta * ((log pi(c_i) - log pi_ref(c_i)) - (log pi(r_i) - log pi_ref(r_i))))``
    with ``c`` the chosen and ``r`` the rejected response (summed log-probs); ``log 2`` at ``pi == pi_ref``.
    The reference log-probs are constants.
    """
    if not beta > 0:
        raise ValueError(f"dpo beta must be > 0 (e.g. 0.1, the DPO paper's default), got {beta!r}")
    shapes = {tuple(t.shape) for t in (chosen_logps, rejected_logps, reference_chosen_logps, reference_rejected_logps)}
    if len(shapes) != 1:
        raise ValueError(f"dpo_loss: all four log-prob tensors must have one shape (one value per pair), got {sorted(shapes)}")
    chosen = chosen_logps.float() - reference_chosen_logps.float().detach()
    rejected = rejected_logps.float() - reference_rejected_logps.float().detach()
    return -F.logsigmoid(beta * (chosen - rejected)).mean()


def activation_mse(activations: torch.Tensor, target: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of hidden states, over the hidden dimension and the non-padding tokens, a scalar.

    ``(1 / N) * sum_{b,t: mask = 1} (1 / H) * ||activations[b, t] - target[b, t]||^2``: the two RMU
    terms (Li et al. 2024, WMDP), with ``target`` the scaled random control vector ``c * u`` (broadcast,
    shape (H,)) for the forget term and the frozen reference's hidden states for the retain term. WMDP's
    code takes ``F.mse_loss`` over every position, padding included; here padding is left out. The
    target is treated as a constant.
    """
    if activations.dim() != 3 or attention_mask.shape != activations.shape[:2]:
        raise ValueError(f"expected activations (B, T, H) and attention_mask (B, T); got {tuple(activations.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    count = mask.sum()
    if count == 0:
        return activations.sum().float() * 0.0
    squared = (activations.float() - target.detach().float()).pow(2).mean(dim=-1)
    return squared.masked_fill(~mask, 0.0).sum() / count


def random_unit_vector(size: int, seed: int) -> torch.Tensor:
    """RMU's control direction ``u``: uniform [0, 1) entries (as WMDP's ``torch.rand``), normalised to unit norm.

    Drawn on the CPU from its own generator, so the same ``(size, seed)`` gives the same vector everywhere.
    """
    vector = torch.rand(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return vector / vector.norm()


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy ``-(1 / N) * sum_{b,t: label != -100} log p(y_bt | prefix)``.

    The retain loss and the compliance fine-tuning loss. A batch without any scored token gives 0
    (still attached to the graph, so a backward pass is a no-op rather than an error).
    """
    log_probs, mask = token_log_probs(logits, labels)
    count = mask.sum()
    if count == 0:
        return logits.sum().float() * 0.0
    return -log_probs.sum() / count


def gradient_ascent_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent on the forget responses: ``-cross_entropy_loss(logits, labels)``.

    Minimising it raises the cross-entropy (lowers the likelihood) of the forget responses; it is
    unbounded below, which is why NPO is the default forget objective.
    """
    return -cross_entropy_loss(logits, labels)


def kl_to_reference(policy_logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean forward KL from the reference to the policy, ``KL(pi_ref || pi)``.

    ``(1 / N) * sum_{b,t: label != -100} sum_v p_ref(v) * (log p_ref(v) - log p(v))`` at the shifted
    positions that predict a scored label, as in open-unlearning's retain KL
    (``F.kl_div(log p, log p_ref, log_target=True)``), but averaged over scored tokens only instead
    of over every position including padding. The reference is treated as a constant.
    """
    if policy_logits.shape != reference_logits.shape:
        raise ValueError(
            f"policy_logits {tuple(policy_logits.shape)} and reference_logits "
            f"{tuple(reference_logits.shape)} must have the same shape"
        )
    shifted_policy, _, mask = _shift(policy_logits, labels)
    count = mask.sum()
    if count == 0:
        return policy_logits.sum().float() * 0.0
    # Only scored positions enter the softmaxes: (N, V) instead of (B, T, V).
    policy_log_probs = F.log_softmax(shifted_policy[mask].float(), dim=-1)
    reference_log_probs = F.log_softmax(reference_logits[:, :-1][mask].detach().float(), dim=-1)
    kl = F.kl_div(policy_log_probs, reference_log_probs, reduction="sum", log_target=True)
    return kl / count


__all__ = [
    "IGNORE_INDEX",
    "response_window",
    "token_log_probs",
    "sequence_log_probs",
    "npo_loss",
    "simnpo_loss",
    "dpo_loss",
    "activation_mse",
    "random_unit_vector",
    "cross_entropy_loss",
    "gradient_ascent_loss",
    "kl_to_reference",
]
