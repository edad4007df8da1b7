"""The record schema (prompt, domain, harmful, response) and its validation, with errors that name file, line and field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ema_lightning.domains import DOMAINS, UnknownDomainError, canonical_domain

HARMFUL_TRUE = frozenset({"true", "yes", "harmful", "1"})
HARMFUL_FALSE = frozenset({"false", "no", "benign", "0"})
HARMFUL_ACCEPTED = "accepted: true/false, 1/0, 'true'/'false', 'yes'/'no', 'harmful'/'benign'"
DOMAINS_ACCEPTED = f"accepted: one of {', '.join(DOMAINS)} (or an alias or display name)"


@dataclass(frozen=True)
class Record:
    """One prompt of the study, with its domain, whether it is harmful, and optionally a response."""

    prompt: str
    domain: str
    """One of `DOMAINS` (canonicalised on load)."""
    harmful: bool
    response: str | None = None
    source_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecordError(ValueError):
    """A row of a data file that cannot become a Record; `str()` reads `<file>:<line>: field '<field>': <problem>; <accepted>`.

    `line` is the 1-based file line for JSONL and CSV, the row index for JSON lists, Parquet and
    `datasets`; it is None for errors about a whole file (missing file, empty split).
    """

    def __init__(
        self,
        path: str,
        line: int | None,
        field: str | None,
        problem: str,
        accepted: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        self.accepted = accepted
        where = self.path if line is None else f"{self.path}:{line}"
        text = f"{where}: " + (f"field '{field}': " if field else "") + problem
        if accepted:
            text += f"; {accepted}"
        super().__init__(text)


def is_missing(value: Any) -> bool:
    """None, NaN (pandas' empty cell) or a blank string."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _plain(value: Any) -> Any:
    # numpy / pyarrow scalars -> Python scalars, so isinstance checks below behave.
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        try:
            return item()
        except (TypeError, ValueError):
            return value
    return value


def parse_harmful(value: Any, *, path: str = "<memory>", line: int | None = None, field: str = "harmful") -> bool:
    """Read a harmful flag from a bool, 0/1, or 'true'/'false', 'yes'/'no', 'harmful'/'benign'."""
    value = _plain(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in HARMFUL_TRUE:
            return True
        if key in HARMFUL_FALSE:
            return False
    raise RecordError(path, line, field, f"cannot read a harmful flag from {value!r}", HARMFUL_ACCEPTED)


def parse_domain(value: Any, *, path: str = "<memory>", line: int | None = None, field: str = "domain") -> str:
    """Canonical domain id for an id, alias or display name; RecordError listing the seven otherwise."""
    value = _plain(value)
    try:
        return canonical_domain(value)
    except UnknownDomainError:
        raise RecordError(path, line, field, f"unknown domain {value!r}", DOMAINS_ACCEPTED) from None


def make_record(
    row: Mapping[str, Any],
    columns: Mapping[str, str] | None = None,
    *,
    path: str = "<memory>",
    line: int | None = None,
    domain: str | None = None,
    harmful: bool | None = None,
) -> Record:
    """Validate one raw row and turn it into a Record.

    `columns` maps Record fields to column names (default: same name). A given `domain` / `harmful`
    replaces the column for this row (fixed values, or a domain resolved from a category).
    """
    columns = columns or {}

    def column(name: str) -> str:
        return columns.get(name, name)

    def required(name: str) -> Any:
        col = column(name)
        if col not in row or is_missing(row[col]):
            problem = "missing" if col not in row else "empty"
            shown = ", ".join(map(str, list(row)[:12])) or "none"
            raise RecordError(
                path, line, col, f"{problem} value for Record.{name}", f"the row must have a non-empty '{col}' column (columns present: {shown})"
            )
        return _plain(row[col])

    def optional(name: str) -> str | None:
        col = column(name)
        if col not in row or is_missing(row[col]):
            return None
        value = _plain(row[col])
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise RecordError(path, line, col, f"expected a string, got {type(value).__name__}", "accepted: a string or nothing")
        return str(value)

    prompt = required("prompt")
    if not isinstance(prompt, str):
        raise RecordError(path, line, column("prompt"), f"expected a string, got {type(prompt).__name__}", "accepted: a non-empty string")
    domain = domain if domain is not None else parse_domain(required("domain"), path=path, line=line, field=column("domain"))
    if harmful is None:
        harmful = parse_harmful(required("harmful"), path=path, line=line, field=column("harmful"))
    return Record(
        prompt=prompt,
        domain=canonical_domain(domain),
        harmful=bool(harmful),
        response=optional("response"),
        source_id=optional("source_id"),
    )
