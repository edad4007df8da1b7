"""Concept vectors per domain and layer, the refusal direction, and their safetensors file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ema_lightning.domains import DOMAINS, canonical_domain

ESTIMATORS = ("difference_of_means", "linear_probe")


def unit(v: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """`v` scaled to unit norm along `dim`; zero vectors stay zero (NaN stays NaN)."""
    return v / v.norm(dim=dim, keepdim=True).clamp_min(eps)


def concept_vectors(acts_by_domain: Mapping[str, torch.Tensor], neutral: torch.Tensor) -> torch.Tensor:
    """Difference of means per domain and layer: mean(domain harmful) - mean(neutral).

    `acts_by_domain[domain]` is `(n, L, H)`, `neutral` is `(m, L, H)`. Returns `(7, L, H)` in `DOMAINS`
    order; a domain without activations gets a NaN row.
    """
    if neutral.ndim != 3 or neutral.shape[0] == 0:
        raise ValueError(f"concept_vectors: neutral activations must be (m>0, L, H), got {tuple(neutral.shape)}")
    neutral_mean = neutral.float().mean(dim=0)
    means = domain_means(acts_by_domain, neutral_mean.shape)
    return means - neutral_mean


def domain_means(acts_by_domain: Mapping[str, torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """Mean activation per domain, `(7, *shape)`, NaN where a domain has no rows."""
    means = torch.full((len(DOMAINS), *shape), float("nan"))
    for name, acts in acts_by_domain.items():
        if acts.shape[0] == 0:
            continue
        if tuple(acts.shape[1:]) != tuple(shape):
            raise ValueError(f"concept_vectors: domain {name!r} activations {tuple(acts.shape)} do not match (n, {tuple(shape)})")
        means[DOMAINS.index(canonical_domain(name))] = acts.float().mean(dim=0)
    return means


def refusal_direction(harmful_acts: torch.Tensor, harmless_acts: torch.Tensor) -> torch.Tensor:
    """The refusal direction per layer, `(L, H)`: mean of all harmful minus mean of all harmless prompts."""
    if harmful_acts.shape[0] == 0 or harmless_acts.shape[0] == 0:
        raise ValueError("refusal_direction: needs at least one harmful and one harmless prompt")
    return harmful_acts.float().mean(dim=0) - harmless_acts.float().mean(dim=0)


def linear_probe_directions(
    acts_by_domain: Mapping[str, torch.Tensor],
    neutral: torch.Tensor,
    l2: float = 1e-2,
    steps: int = 50,
) -> torch.Tensor:
    """Second estimator: unit weight vectors of an L2-regularised logistic regression, domain vs neutral.

    One probe per domain and layer (all layers of a domain are fitted together with LBFGS; the loss is a
    sum over layers, so each layer's fit is independent). Returns `(7, L, H)`, NaN for absent domains.
    """
    neutral = neutral.float()
    n_layers, hidden = neutral.shape[1:]
    directions = torch.full((len(DOMAINS), n_layers, hidden), float("nan"))
    for name, acts in acts_by_domain.items():
        if acts.shape[0] == 0:
            continue
        x = torch.cat([acts.float(), neutral]).transpose(0, 1)  # (L, N, H)
        y = torch.cat([torch.ones(acts.shape[0]), torch.zeros(neutral.shape[0])])
        # Centre and scale each layer by one scalar: the fitted direction is unchanged in the original space.
        x = x - x.mean(dim=1, keepdim=True)
        x = x / x.pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-12)[:, None, None]
        directions[DOMAINS.index(canonical_domain(name))] = unit(_fit_logistic(x, y, l2, steps))
    return directions


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, steps: int) -> torch.Tensor:
    """Weights `(L, H)` of independent logistic regressions on `x (L, N, H)` with shared labels `y (N,)`."""
    weight = torch.zeros(x.shape[0], x.shape[2], requires_grad=True)
    bias = torch.zeros(x.shape[0], 1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")
    # Balanced classes: each class weighs half, whatever its size.
    sample_weight = torch.where(y > 0, 0.5 / y.sum().clamp_min(1), 0.5 / (1 - y).sum().clamp_min(1))

    def closure():
        optimizer.zero_grad()
        logits = torch.einsum("lnh,lh->ln", x, weight) + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y.expand_as(logits), weight=sample_weight.expand_as(logits), reduction="sum"
        )
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach()


@dataclass
class ConceptVectors:
    """Concept vectors of one model at one training step, plus what they were computed from."""

    vectors: torch.Tensor
    """(7, L, H) difference of means per domain (NaN rows: no prompts); L = decoder layers + embeddings."""
    refusal_direction: torch.Tensor
    """(L, H) mean of all harmful minus mean of all harmless (benign + neutral) prompts."""
    counts: dict[str, int]
    """Harmful prompts per domain."""
    neutral_count: int = 0
    harmless_count: int = 0
    model_name: str = ""
    step: int = 0
    position: str = "last"
    probe_vectors: torch.Tensor | None = None
    """(7, L, H) unit linear-probe directions (optional second estimator)."""
    domains: tuple[str, ...] = field(default=DOMAINS)

    @property
    def unit_vectors(self) -> torch.Tensor:
        return unit(self.vectors)

    @property
    def unit_refusal_direction(self) -> torch.Tensor:
        return unit(self.refusal_direction)

    @property
    def layers(self) -> list[int]:
        """Layer indices: 0 = embeddings, l = output of decoder layer l."""
        return list(range(self.vectors.shape[1]))

    @property
    def estimator(self) -> str:
        return "+".join(ESTIMATORS if self.probe_vectors is not None else ESTIMATORS[:1])

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (tensors + string metadata); parent directories are created."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "vectors": self.vectors,
            "unit_vectors": self.unit_vectors,
            "refusal_direction": self.refusal_direction,
            "unit_refusal_direction": self.unit_refusal_direction,
        }
        if self.probe_vectors is not None:
            tensors["probe_vectors"] = self.probe_vectors
        metadata = {
            "model": self.model_name,
            "step": str(self.step),
            "layers": json.dumps(self.layers),
            "domains": json.dumps(list(self.domains)),
            "counts": json.dumps(self.counts),
            "neutral_count": str(self.neutral_count),
            "harmless_count": str(self.harmless_count),
            "position": self.position,
            "estimator": self.estimator,
        }
        save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ConceptVectors:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for key in ("vectors", "refusal_direction"):
            if key not in tensors:
                raise ValueError(f"{path}: tensor '{key}' missing; expected a file written by ConceptVectors.save")
        domains = tuple(json.loads(metadata.get("domains", json.dumps(list(DOMAINS)))))
        if domains != DOMAINS:
            raise ValueError(f"{path}: metadata 'domains' {domains} differ from ema_lightning.domains.DOMAINS")
        return cls(
            vectors=tensors["vectors"],
            refusal_direction=tensors["refusal_direction"],
            counts={k: int(v) for k, v in json.loads(metadata.get("counts", "{}")).items()},
            neutral_count=int(metadata.get("neutral_count", 0)),
            harmless_count=int(metadata.get("harmless_count", 0)),
            model_name=metadata.get("model", ""),
            step=int(metadata.get("step", 0)),
            position=metadata.get("position", "last"),
            probe_vectors=tensors.get("probe_vectors"),
            domains=domains,
        )


def extract_concept_vectors(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence,
    neutral_records: Sequence,
    position: str = "last",
    batch_size: int = 32,
    model_name: str = "",
    step: int = 0,
    probe: bool = False,
    system_prompt: str | None = None,
    adapters: bool = True,
) -> ConceptVectors:
    """Concept vectors from one capture over all prompts.

    `records`: harmful prompts give each domain's vector; benign ones join `neutral_records` as the
    harmless side of the refusal direction. The domain of neutral records is ignored.
    """
    from ema_lightning.concepts.capture import capture_activations

    harmful = [r for r in records if r.harmful]
    benign = [r for r in records if not r.harmful]
    if not harmful:
        raise ValueError("extract_concept_vectors: no harmful records (records with harmful=True)")
    if not neutral_records:
        raise ValueError("extract_concept_vectors: no neutral records")
    prompts = [r.prompt for r in harmful] + [r.prompt for r in neutral_records] + [r.prompt for r in benign]
    acts = capture_activations(model, tokenizer, prompts, (position,), batch_size, system_prompt, adapters)[position]
    harmful_acts = acts[: len(harmful)]
    neutral_acts = acts[len(harmful) : len(harmful) + len(neutral_records)]
    harmless_acts = acts[len(harmful) :]

    domain_of = [canonical_domain(r.domain) for r in harmful]
    acts_by_domain = {}
    for domain in DOMAINS:
        rows = [i for i, d in enumerate(domain_of) if d == domain]
        if rows:
            acts_by_domain[domain] = harmful_acts[rows]
    return ConceptVectors(
        vectors=concept_vectors(acts_by_domain, neutral_acts),
        refusal_direction=refusal_direction(harmful_acts, harmless_acts),
        counts={d: int(acts_by_domain[d].shape[0]) if d in acts_by_domain else 0 for d in DOMAINS},
        neutral_count=len(neutral_records),
        harmless_count=len(neutral_records) + len(benign),
        model_name=model_name,
        step=step,
        position=position,
        probe_vectors=linear_probe_directions(acts_by_domain, neutral_acts) if probe else None,
    )
