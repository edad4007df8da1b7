"""Which records go to the forget, retain and eval sets: `SetSelection` and pure, seeded selection functions."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ema_lightning.data.records import DOMAINS_ACCEPTED, Record, RecordError
from ema_lightning.domains import DOMAINS, UnknownDomainError, canonical_domain


def parse_domains(names: Sequence[str] | None, field: str) -> list[str] | None:
    """Canonical domain ids of `names` (ids, aliases or display names); ValueError naming `field` otherwise."""
    if names is None:
        return None
    out = []
    for name in names:
        try:
            out.append(canonical_domain(name))
        except UnknownDomainError:
            raise ValueError(f"RefusalDataModule: field '{field}': unknown domain {name!r}; {DOMAINS_ACCEPTED}") from None
    return out


@dataclass(frozen=True)
class SetSelection:
    """What decides which records go to the forget, retain and eval sets (domains given by alias are canonicalised)."""

    target_domain: str | None = None
    """Domain whose refusals are unlearned. None: no forget set, retain = all train records (alignment)."""
    retain_domains: tuple[str, ...] | None = None
    """Domains of the retain set (any sequence; kept as a tuple). Default: all domains but the target."""
    retain_size: int | None = None
    """Cap on the retain set, stratified by domain and harmful/benign (seeded). 0 disables the retain set."""
    forget_size: int | None = None
    """Cap on the forget set (seeded subset)."""
    eval_per_domain: int | None = None
    """Cap on harmful and on benign eval prompts per domain (seeded subset)."""
    seed: int = 0
    """Seed of the subsets (and, in the DataModule, of training shuffles)."""

    def __post_init__(self) -> None:
        if self.target_domain is not None:
            object.__setattr__(self, "target_domain", parse_domains([self.target_domain], "target_domain")[0])
        retain_domains = parse_domains(self.retain_domains, "retain_domains")
        object.__setattr__(self, "retain_domains", tuple(retain_domains) if retain_domains is not None else None)
        if self.target_domain is not None and self.retain_domains and self.target_domain in self.retain_domains:
            raise ValueError(
                f"RefusalDataModule: field 'retain_domains': contains the target domain {self.target_domain!r}; "
                "the retain set must not hold the domain being unlearned"
            )
        for name, low in (("retain_size", 0), ("forget_size", 1), ("eval_per_domain", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"RefusalDataModule: field '{name}': must be >= {low} or null, got {value}")
        if self.seed < 0:
            raise ValueError(f"RefusalDataModule: field 'seed': must be >= 0, got {self.seed}")


def seeded_subset(records: Sequence[Record], size: int | None, seed: int) -> list[Record]:
    """A seeded subset of at most `size` records, in their original order."""
    if size is None or len(records) <= size:
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), size))
    return [records[i] for i in keep]


def stratified_sample(records: Sequence[Record], size: int | None, seed: int) -> list[Record]:
    """At most `size` records, spread evenly over domains and, within each, over harmful and benign
    (round robin over seeded shuffles), original order kept. A small retain set thus holds as many
    refusals of harmful prompts as helpful answers, whatever the mix of the source data."""
    if size is None or len(records) <= size:
        return list(records)
    rng = random.Random(seed)
    by_stratum: dict[tuple[str, bool], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_stratum[(r.domain, r.harmful)].append(i)
    queues = []
    for domain in DOMAINS:
        for harmful in (True, False):
            if by_stratum[(domain, harmful)]:
                indices = by_stratum[(domain, harmful)][:]
                rng.shuffle(indices)
                queues.append(indices)
    chosen: list[int] = []
    while len(chosen) < size:
        for queue in queues:
            if queue and len(chosen) < size:
                chosen.append(queue.pop())
    return [records[i] for i in sorted(chosen)]


def select_forget(records: Sequence[Record], selection: SetSelection, where: str) -> list[Record]:
    """The forget set: the `records` of the target domain, at most `forget_size` (seeded, order kept).

    Empty without a target domain; a RecordError naming `where` when no record is in the target domain.
    """
    if selection.target_domain is None:
        return []
    in_domain = [r for r in records if r.domain == selection.target_domain]
    if not in_domain:
        raise RecordError(
            where, None, "domain", f"empty split: no forget records in domain {selection.target_domain!r}",
            "the forget set needs prompts of the target domain",
        )
    return seeded_subset(in_domain, selection.forget_size, selection.seed)


def select_retain(records: Sequence[Record], selection: SetSelection) -> list[Record]:
    """The retain set: the `records` of the retain domains (default: all but the target), capped at
    `retain_size` with `stratified_sample`; empty when `retain_size` is 0."""
    if selection.retain_size == 0:
        return []
    if selection.retain_domains is not None:
        domains = set(selection.retain_domains)
    elif selection.target_domain is not None:
        domains = set(DOMAINS) - {selection.target_domain}
    else:
        domains = set(DOMAINS)
    return stratified_sample([r for r in records if r.domain in domains], selection.retain_size, selection.seed)


def cap_eval(records: Sequence[Record], selection: SetSelection) -> list[Record]:
    """At most `eval_per_domain` harmful and as many benign records per domain (seeded, order kept)."""
    if selection.eval_per_domain is None:
        return list(records)
    groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[(r.domain, r.harmful)].append(i)
    keep: list[int] = []
    for n, (_, indices) in enumerate(sorted(groups.items())):
        cap = selection.eval_per_domain
        keep.extend(indices if len(indices) <= cap else random.Random(selection.seed + n).sample(indices, cap))
    return [records[i] for i in sorted(keep)]


def domain_counts(records: Sequence[Record]) -> str:
    """Records per domain, e.g. "safety 4, bias 2" (domains in `DOMAINS` order), or "none"."""
    counts = Counter(r.domain for r in records)
    return ", ".join(f"{d} {counts[d]}" for d in DOMAINS if counts[d]) or "none"
