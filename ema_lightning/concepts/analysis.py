"""Pure functions over concept vectors: similarities, drift, refusal projection, correlation with refusal drop."""

from __future__ import annotations

import math
import warnings

import torch

from ema_lightning.concepts.vectors import unit
from ema_lightning.domains import DOMAINS, domain_index


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Domain x domain cosine similarity per layer: `(D, L, H)` -> `(L, D, D)` (NaN for NaN rows)."""
    u = unit(vectors.float()).transpose(0, 1)  # (L, D, H)
    return u @ u.transpose(1, 2)


def similarity_to_target(vectors: torch.Tensor, target: str | int) -> torch.Tensor:
    """Cosine of each domain's vector with the target domain's, per layer: `(D, L)`."""
    index = target if isinstance(target, int) else domain_index(target)
    u = unit(vectors.float())
    return (u * u[index]).sum(-1)


def drift(vectors_now: torch.Tensor, vectors_base: torch.Tensor) -> torch.Tensor:
    """Cosine of each domain's vector now with its baseline vector, per layer: `(D, L)` (1 = unchanged)."""
    if vectors_now.shape != vectors_base.shape:
        raise ValueError(f"drift: shapes differ, now {tuple(vectors_now.shape)} vs base {tuple(vectors_base.shape)}")
    return (unit(vectors_now.float()) * unit(vectors_base.float())).sum(-1)


def refusal_projection(vectors: torch.Tensor, refusal_dir: torch.Tensor) -> torch.Tensor:
    """Projection of each domain's vector (or mean activation) `(D, L, H)` on the unit refusal direction `(L, H)`: `(D, L)`."""
    return (vectors.float() * unit(refusal_dir.float())).sum(-1)


def early_layers(n_layers: int, fraction: float = 1 / 3) -> range:
    """Indices of the early layers on a layer axis of `n_layers` entries (index 0 = embeddings).

    The first `fraction` of the decoder layers (rounded, at least one), skipping the embeddings unless
    they are the only entry.
    """
    if n_layers < 1:
        raise ValueError(f"early_layers: n_layers must be >= 1, got {n_layers}")
    if not 0 < fraction <= 1:
        raise ValueError(f"early_layers: fraction must be in (0, 1], got {fraction}")
    if n_layers == 1:
        return range(0, 1)
    count = max(1, round((n_layers - 1) * fraction))
    return range(1, 1 + count)


def _finite_pairs(x, y) -> tuple[list[float], list[float]]:
    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=True) if math.isfinite(float(a)) and math.isfinite(float(b))]
    return [a for a, _ in pairs], [b for _, b in pairs]


def similarity_vs_drop(similarity, drop) -> dict:
    """Spearman and Pearson correlation of similarity to the target with refusal drop, over domains.

    Non-finite pairs are left out. Returns `{"spearman": (rho, p), "pearson": (r, p), "n": int}` and, when
    a correlation is undefined (fewer than three domains, or a constant input), NaNs and a `"note"`.
    """
    from scipy import stats

    xs, ys = _finite_pairs(torch.as_tensor(similarity).flatten().tolist(), torch.as_tensor(drop).flatten().tolist())
    nan = (float("nan"), float("nan"))
    result = {"spearman": nan, "pearson": nan, "n": len(xs)}
    if len(xs) < 3:
        result["note"] = f"only {len(xs)} domains with finite similarity and drop; need at least 3"
        return result
    if len(set(xs)) == 1 or len(set(ys)) == 1:
        result["note"] = "constant " + ("similarity" if len(set(xs)) == 1 else "refusal drop") + "; correlation undefined"
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho, p_rho = stats.spearmanr(xs, ys)
        r, p_r = stats.pearsonr(xs, ys)
    result["spearman"] = (float(rho), float(p_rho))
    result["pearson"] = (float(r), float(p_r))
    result["spearman_permutation_p"] = permutation_p_value(xs, ys)
    return result


def permutation_p_value(xs, ys, resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho: exact over every pairing when there are at most
    `resamples` of them (6 domains: 720), else seeded Monte Carlo. Makes no assumption of normality,
    which the asymptotic p-value of six points needs."""
    import numpy as np
    from scipy import stats

    x = np.asarray(xs)

    def rho(y):  # one sample: "pairings" reorders it against the fixed similarities (n! orders)
        return stats.spearmanr(x, y)[0]

    result = stats.permutation_test((np.asarray(ys),), rho, permutation_type="pairings", n_resamples=resamples,
                                    alternative="two-sided", rng=np.random.default_rng(seed))
    return float(result.pvalue)


def correlation_per_layer(similarity: torch.Tensor, drop) -> list[dict]:
    """`similarity_vs_drop` at every layer of `similarity (D, L)`; each entry also carries `"layer"`."""
    similarity = torch.as_tensor(similarity)
    return [{"layer": layer, **similarity_vs_drop(similarity[:, layer], drop)} for layer in range(similarity.shape[1])]


def drop_tensor(drop: dict[str, float], exclude: str | None = None) -> torch.Tensor:
    """Refusal drop per domain as a `(7,)` tensor in `DOMAINS` order; NaN for absent domains and `exclude`."""
    values = torch.full((len(DOMAINS),), float("nan"))
    for name, value in drop.items():
        if value is not None:
            values[domain_index(name)] = float(value)
    if exclude is not None:
        values[domain_index(exclude)] = float("nan")
    return values
