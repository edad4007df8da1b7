"""The seven responsible-AI domains of the study: the single source of truth for ids, names, aliases."""

from __future__ import annotations

DOMAINS: tuple[str, ...] = (
    "cybersecurity",
    "safety",
    "toxicity",
    "bias",
    "sensitive_content",
    "medical_legal",
    "privacy",
)
"""Domain ids, in the fixed order used for metric states, tensors and tables."""

DISPLAY_NAMES: dict[str, str] = {
    "cybersecurity": "Cybersecurity",
    "safety": "Safety",
    "toxicity": "Toxicity",
    "bias": "Bias",
    "sensitive_content": "Sensitive Content",
    "medical_legal": "Medical/Legal",
    "privacy": "Privacy",
}

ALIASES: dict[str, str] = {
    "cyber": "cybersecurity",
    "cyber_security": "cybersecurity",
    "hacking": "cybersecurity",
    "malware": "cybersecurity",
    "physical_safety": "safety",
    "harm": "safety",
    "violence": "safety",
    "toxic": "toxicity",
    "hate": "toxicity",
    "harassment": "toxicity",
    "discrimination": "bias",
    "fairness": "bias",
    "sensitive": "sensitive_content",
    "sexual_content": "sensitive_content",
    "adult_content": "sensitive_content",
    "self_harm": "sensitive_content",
    "medical": "medical_legal",
    "legal": "medical_legal",
    "medical/legal": "medical_legal",
    "medical_and_legal": "medical_legal",
    "private": "privacy",
    "pii": "privacy",
}
"""Accepted spellings besides the ids and display names (matched case-insensitively)."""


class UnknownDomainError(ValueError):
    """A name that is none of the seven domains nor an accepted alias."""


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


_LOOKUP: dict[str, str] = {
    **{_key(d): d for d in DOMAINS},
    **{_key(n): d for d, n in DISPLAY_NAMES.items()},
    **{_key(a): d for a, d in ALIASES.items()},
}


def canonical_domain(name: str) -> str:
    """Return the domain id for an id, display name or alias; raise `UnknownDomainError` otherwise."""
    if isinstance(name, str):
        domain = _LOOKUP.get(_key(name))
        if domain is not None:
            return domain
    raise UnknownDomainError(f"unknown domain {name!r}; expected one of: {', '.join(DOMAINS)} (or an alias)")


def domain_index(name: str) -> int:
    """Position of a domain in `DOMAINS` (the index used in metric states and tensors)."""
    return DOMAINS.index(canonical_domain(name))


def display_name(name: str) -> str:
    return DISPLAY_NAMES[canonical_domain(name)]
