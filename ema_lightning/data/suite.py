"""A prompt suite: several mapped sources merged into one seven-domain benchmark, without duplicate
or near-duplicate prompts, split deterministically into a small `dev` part and a `test` part.

A suite is a YAML file (e.g. configs/data/public_suite.yaml) read as a RecordSource path with
``split: dev | test | all`` (`sources.load_suite` reads the members; this module merges and splits;
`ema-lightning suite FILE` prints the counts)::

    name: public seven-domain suite
    members:                       # RecordSource mapping files (or dicts), in priority order
      - external/harmbench.yaml    # relative paths are relative to the suite file
    near_duplicate: 0.8            # word-set Jaccard at which a later prompt is dropped
    dev_fraction: 0.2              # share of each (domain, harmful) stratum in `dev` ...
    dev_max: 10                    # ... at most this many

A prompt is normalised (NFKC, lower case, punctuation to spaces) before it is compared. Of two
prompts with the same normalised text or a word-set Jaccard of at least `near_duplicate`, the one of
the earlier member (or the earlier row) is kept; prompts compared are of the same harmful flag, so
XSTest's safe prompts survive beside their unsafe twins. The same text marked harmful in one set and
benign in another is ambiguous and dropped from both sides (counted). The split orders each stratum
by a hash of the normalised text, so it does not depend on seeds, on the order of members or on
which other prompts are present.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ema_lightning.data.records import Record, RecordError
from ema_lightning.domains import DOMAINS

log = logging.getLogger(__name__)

SPLITS = ("dev", "test", "all")
SUITE_KEYS = ("name", "members", "near_duplicate", "dev_fraction", "dev_max")
_WORD = re.compile(r"[^\W_]+")


def normalise(prompt: str) -> str:
    """Lower-case words of the NFKC text, joined by single spaces (punctuation and spacing dropped)."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", prompt).lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class MemberCounts:
    """What one member gave the suite."""

    name: str
    rows: int = 0
    mapped: int = 0
    """Records after the domain mapping (rows mapped to no domain are dropped by the member's mapping)."""
    duplicates: int = 0
    near_duplicates: int = 0
    conflicts: int = 0
    """Prompts dropped because another set gives the same text the opposite harmful flag."""
    kept: int = 0


@dataclass
class SuiteReport:
    """Counts of one suite load: per member, and per (domain, harmful, split)."""

    name: str
    members: list[MemberCounts] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    """(domain, harmful, split) -> prompts."""

    def table(self) -> str:
        """Markdown: harmful and benign prompts per domain and split, then what each member gave."""
        lines = ["| domain | harmful dev | harmful test | harmful all | benign dev | benign test | benign all |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        total: Counter = Counter()
        for domain in DOMAINS:
            cells = []
            for harmful in (True, False):
                dev, test = self.counts[(domain, harmful, "dev")], self.counts[(domain, harmful, "test")]
                cells += [dev, test, dev + test]
            total.update(dict(enumerate(cells)))
            lines.append(f"| {domain} | " + " | ".join(str(c) for c in cells) + " |")
        lines.append("| **all** | " + " | ".join(f"**{total[i]}**" for i in range(6)) + " |")
        lines += ["", "| member | rows | mapped to a domain | duplicates | near-duplicates | label conflicts | kept |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m in self.members:
            lines.append(f"| {m.name} | {m.rows} | {m.mapped} | {m.duplicates} | {m.near_duplicates} | {m.conflicts} | {m.kept} |")
        return "\n".join(lines)


@dataclass(frozen=True)
class PromptSuite:
    """The settings of a suite file (see the module docstring)."""

    path: str
    name: str
    members: tuple[Any, ...]
    near_duplicate: float = 0.8
    dev_fraction: float = 0.2
    dev_max: int = 10

    @classmethod
    def from_values(cls, values: dict[str, Any], path: str) -> PromptSuite:
        """The suite of a parsed suite file at `path` (its members' relative paths are relative to it)."""
        unknown = sorted(set(values) - set(SUITE_KEYS))
        if unknown:
            raise RecordError(path, None, unknown[0], "unknown key", f"accepted: {', '.join(SUITE_KEYS)}")
        members = values.get("members")
        if not isinstance(members, list) or not members:
            raise RecordError(path, None, "members", "a suite needs a non-empty list of members",
                              "each member a RecordSource mapping file or a mapping of RecordSource fields")
        suite = cls(path=path, name=str(values.get("name") or Path(path).stem), members=tuple(members),
                    **{k: values[k] for k in ("near_duplicate", "dev_fraction", "dev_max") if k in values})
        if not 0 < suite.near_duplicate <= 1:
            raise RecordError(path, None, "near_duplicate", f"must be in (0, 1], got {suite.near_duplicate}", "1 keeps all but exact duplicates")
        if not 0 <= suite.dev_fraction < 1:
            raise RecordError(path, None, "dev_fraction", f"must be in [0, 1), got {suite.dev_fraction}", "e.g. 0.2")
        if suite.dev_max < 0:
            raise RecordError(path, None, "dev_max", f"must be >= 0, got {suite.dev_max}", "e.g. 10")
        return suite

    def member_fields(self) -> list[dict[str, Any]]:
        """Each member as RecordSource fields; relative paths made relative to the suite file."""
        here = Path(self.path).parent
        out = []
        for i, member in enumerate(self.members):
            if isinstance(member, str):
                member = {"mapping_file": member}
            if not isinstance(member, dict):
                raise RecordError(self.path, None, f"members[{i}]", f"expected a file name or a mapping, got {type(member).__name__}",
                                  "a RecordSource mapping file or a mapping of RecordSource fields")
            member = dict(member)
            for key in ("mapping_file", "path"):
                value = member.get(key)
                if isinstance(value, str) and not value.startswith(("package:", "builtin:")) and (here / value).exists():
                    member[key] = str(here / value)
            out.append(member)
        return out

    def merge(self, members: list[tuple[str, int, list[Record]]]) -> tuple[dict[str, list[Record]], SuiteReport]:
        """The suite's records by split ("dev", "test", "all") and the report, from each member's
        (name, rows read, records after its mapping), in member order."""
        report = SuiteReport(self.name)
        kept: list[Record | None] = []
        by_text: dict[str, tuple[int, bool]] = {}  # normalised text -> (index in kept, harmful)
        conflicted: set[str] = set()
        index = _NearDuplicateIndex(self.near_duplicate)
        for name, rows, records in members:
            counts = MemberCounts(name, rows=rows, mapped=len(records))
            for record in records:
                text = normalise(record.prompt)
                if text in conflicted:
                    counts.conflicts += 1
                    continue
                if text in by_text:
                    position, harmful = by_text[text]
                    if harmful == record.harmful:
                        counts.duplicates += 1
                    else:  # the same text both harmful and benign: ambiguous, dropped on both sides
                        counts.conflicts += 1
                        conflicted.add(text)
                        kept[position] = None
                        del by_text[text]
                    continue
                words = frozenset(text.split())
                if index.matches(words, record.harmful):
                    counts.near_duplicates += 1
                    continue
                by_text[text] = (len(kept), record.harmful)
                index.add(words, record.harmful)
                kept.append(record)
                counts.kept += 1
            report.members.append(counts)
        records = [r for r in kept if r is not None]
        conflicts = sum(m.conflicts for m in report.members)
        if conflicts:
            log.info("%s: dropped %d prompts given both harmful and benign flags by different sets", self.path, conflicts)
        splits = split_dev_test(records, self.dev_fraction, self.dev_max)
        for split in ("dev", "test"):
            for r in splits[split]:
                report.counts[(r.domain, r.harmful, split)] += 1
        return splits, report


class _NearDuplicateIndex:
    """Word sets seen so far, found again by prefix filtering: two sets with Jaccard >= t share one of
    the first |A| - ceil(t |A|) + 1 words of A in a fixed global order (here: by hash, not frequency,
    so the index can grow one prompt at a time)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.sets: list[frozenset[str]] = []
        self.postings: dict[tuple[bool, str], list[int]] = defaultdict(list)

    def _prefix(self, words: frozenset[str]) -> list[str]:
        ordered = sorted(words, key=_word_order)
        size = len(ordered) - math.ceil(self.threshold * len(ordered) - 1e-9) + 1
        return ordered[:max(size, 1)]

    def matches(self, words: frozenset[str], harmful: bool) -> bool:
        if self.threshold >= 1 or not words:
            return False
        seen: set[int] = set()
        for word in self._prefix(words):
            for i in self.postings.get((harmful, word), ()):
                if i not in seen:
                    seen.add(i)
                    if jaccard(words, self.sets[i]) >= self.threshold:
                        return True
        return False

    def add(self, words: frozenset[str], harmful: bool) -> None:
        if self.threshold >= 1 or not words:
            return
        self.sets.append(words)
        for word in self._prefix(words):
            self.postings[(harmful, word)].append(len(self.sets) - 1)


def _word_order(word: str) -> bytes:
    return hashlib.blake2b(word.encode(), digest_size=8).digest()


def _rank(record: Record) -> bytes:
    return hashlib.sha256(normalise(record.prompt).encode()).digest()


def split_dev_test(records: list[Record], dev_fraction: float, dev_max: int) -> dict[str, list[Record]]:
    """`dev`: of each (domain, harmful) stratum, the round(dev_fraction * n) prompts (at most `dev_max`)
    first in the order of a hash of their normalised text; `test`: the rest; `all`: both. Each list
    keeps the records' order."""
    strata: dict[tuple[str, bool], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        strata[(r.domain, r.harmful)].append(i)
    dev: set[int] = set()
    for indices in strata.values():
        size = min(dev_max, int(round(dev_fraction * len(indices))))
        dev.update(sorted(indices, key=lambda i: _rank(records[i]))[:size])
    return {"dev": [r for i, r in enumerate(records) if i in dev],
            "test": [r for i, r in enumerate(records) if i not in dev],
            "all": list(records)}
