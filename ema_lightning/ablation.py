"""Refusal-direction ablation as a comparison to unlearning (Arditi et al. 2024).

The direction is a difference of means of residual-stream activations at the last prompt token
(the concept-vector capture, `concepts.capture`), one candidate per layer:

- `refusal`: mean over all harmful prompts minus mean over all harmless ones (benign + neutral);
- `domain`: the target domain's own refusal direction (its harmful prompts minus its benign
  look-alikes, or minus the neutral prompts where it has none) with the global refusal direction of
  the same layer projected out: what is specific to refusing that domain.

The layer is chosen on held-out prompts, as the paper does: each candidate (layers up to
`max_layer_fraction` of the depth) is ablated everywhere, and the one that lowers refusal most on the
selection's harmful prompts (first-token refusal log-odds, `LogitRefusalJudge`) wins among those that
change the next-token distribution on harmless prompts by at most `max_kl` (KL, nats).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from ema_lightning.concepts.vectors import unit
from ema_lightning.data.collate import prompt_batches
from ema_lightning.data.records import Record
from ema_lightning.domains import canonical_domain
from ema_lightning.layers import DirectionalAblation, project_out

DirectionKind = Literal["refusal", "domain"]


def stratum(record: Record) -> tuple[str, bool]:
    """The (domain, harmful) stratum of a record: what `split_selection` holds out 1 in `every` of."""
    return canonical_domain(record.domain), record.harmful


def split_selection(records: Sequence[Record], every: int,
                    key: Callable[[Record], Hashable] = stratum) -> tuple[list[Record], list[Record]]:
    """(direction records, selection records): every `every`-th record of each stratum (`key`, by
    default (domain, harmful)), in file order, is held out for choosing the layer; the rest estimate
    the direction."""
    if every < 2:
        raise ValueError(f"split_selection: every must be >= 2 (1 in `every` records held out), got {every}")
    seen: dict[Hashable, int] = {}
    fit, held_out = [], []
    for record in records:
        k = key(record)
        seen[k] = seen.get(k, -1) + 1
        (held_out if seen[k] % every == every - 1 else fit).append(record)
    return fit, held_out


def prompt_groups(kind: DirectionKind, target: str | None, records: Sequence[Record], neutral: Sequence[Record],
                  every: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(direction groups, selection groups) of prompts, each split by `split_selection` (the neutral
    prompts as one stratum).

    The direction groups are `harmful` and `harmless` (benign look-alikes and neutral prompts) and,
    for a `domain` direction, `target_harmful` and `target_harmless` (the target's look-alikes, or the
    neutral prompts where it has none). The selection groups are `harmful` (the target's only, for a
    `domain` direction) and `harmless`."""
    fit, held_out = split_selection(records, every)
    fit_neutral, held_neutral = split_selection(neutral, every, key=lambda record: None)

    def harmful(rs, domain=None):
        return [r.prompt for r in rs if r.harmful and domain in (None, canonical_domain(r.domain))]

    def harmless(rs, ns, domain=None):
        own = [r.prompt for r in rs if not r.harmful and domain in (None, canonical_domain(r.domain))]
        return own if domain is not None and own else own + [r.prompt for r in ns]

    groups = {"harmful": harmful(fit), "harmless": harmless(fit, fit_neutral)}
    if kind == "domain":
        groups |= {"target_harmful": harmful(fit, target), "target_harmless": harmless(fit, fit_neutral, target)}
    selection = {"harmful": harmful(held_out, target if kind == "domain" else None),
                 "harmless": harmless(held_out, held_neutral)}
    return groups, selection


def candidate_layers(n_layers: int, max_layer_fraction: float) -> list[int]:
    """Hidden-state indices worth trying: outputs of decoder layers 1 .. `max_layer_fraction` of the
    depth (index 0 is the embeddings; the last index is after the final norm and is never a candidate)."""
    if not 0.0 < max_layer_fraction <= 1.0:
        raise ValueError(f"max_layer_fraction must be in (0, 1], got {max_layer_fraction}")
    top = min(n_layers - 1, max(1, math.floor(max_layer_fraction * n_layers)))
    return list(range(1, top + 1))


def directions(
    kind: DirectionKind,
    harmful: torch.Tensor,
    harmless: torch.Tensor,
    target_harmful: torch.Tensor | None = None,
    target_harmless: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unit directions per layer `(L, H)` from activations `(n, L, H)` (see the module docstring)."""
    refusal = unit(harmful.float().mean(0) - harmless.float().mean(0))
    if kind == "refusal":
        return refusal
    if kind != "domain":
        raise ValueError(f"direction: {kind!r}; accepted: refusal, domain")
    if target_harmful is None or target_harmful.shape[0] == 0 or target_harmless is None or target_harmless.shape[0] == 0:
        raise ValueError("direction: domain needs harmful prompts of the target domain and harmless ones")
    own = target_harmful.float().mean(0) - target_harmless.float().mean(0)
    return unit(torch.stack([project_out(own[l], refusal[l]) for l in range(own.shape[0])]))


@dataclass(frozen=True)
class LayerScore:
    """One candidate layer of the selection: refusal left on harmful prompts and the harm done to harmless ones."""

    layer: int
    refusal_score: float
    """Mean first-token refusal log-odds on the selection's harmful prompts with this direction ablated."""
    kl: float
    """Mean KL (nats) of the next-token distribution on the selection's harmless prompts, unablated || ablated."""


@torch.no_grad()
def last_logits(model, tokenizer, prompts: Sequence[str], batch_size: int, system_prompt: str | None, judge) -> torch.Tensor:
    """(n, V) next-token logits at the end of each chat-formatted prompt, in order."""
    device = next(model.parameters()).device
    rows = [judge.last_logits(model, enc["input_ids"].to(device), enc["attention_mask"].to(device))
            for _, enc in prompt_batches(tokenizer, list(prompts), batch_size, system_prompt, by_length=False)]
    return torch.cat(rows).float().cpu()


def score_layers(
    model, tokenizer, candidates: torch.Tensor, layers: Sequence[int], harmful: Sequence[str], harmless: Sequence[str],
    judge, batch_size: int = 32, system_prompt: str | None = None,
) -> list[LayerScore]:
    """Ablate each candidate direction (`candidates[l]`, l in `layers`) and score it on held-out prompts."""
    reference = torch.log_softmax(last_logits(model, tokenizer, harmless, batch_size, system_prompt, judge), -1)
    scores = []
    for layer in layers:
        with DirectionalAblation(model, candidates[layer]):
            refusal = judge.log_odds(last_logits(model, tokenizer, harmful, batch_size, system_prompt, judge))
            ablated = torch.log_softmax(last_logits(model, tokenizer, harmless, batch_size, system_prompt, judge), -1)
        kl = (reference.exp() * (reference - ablated)).sum(-1)
        scores.append(LayerScore(layer, float(refusal.mean()), float(kl.mean())))
    return scores


def choose_layer(scores: Sequence[LayerScore], max_kl: float) -> tuple[LayerScore, bool]:
    """The candidate with the lowest refusal score among those with KL <= `max_kl`, and True; when none
    passes, the lowest refusal score of all, and False."""
    if not scores:
        raise ValueError("choose_layer: no candidate layers")
    passing = [s for s in scores if s.kl <= max_kl]
    return min(passing or scores, key=lambda s: (s.refusal_score, s.layer)), bool(passing)


def selection_table(scores: Sequence[LayerScore], chosen: int) -> list[dict]:
    """The selection as JSON rows (layer, refusal score, KL, chosen)."""
    return [{**asdict(s), "chosen": s.layer == chosen} for s in scores]
