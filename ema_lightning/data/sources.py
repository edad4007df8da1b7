"""Where records come from: files, `datasets` datasets, or the built-in data, and how their columns map onto Records."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ema_lightning.data.records import DOMAINS_ACCEPTED, Record, RecordError, is_missing, make_record, parse_domain
from ema_lightning.data.suite import SPLITS, PromptSuite, SuiteReport

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("jsonl", "json", "csv", "parquet", "datasets", "builtin", "suite")
_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".yaml": "suite", ".yml": "suite"}
COLUMN_KEYS: tuple[str, ...] = ("prompt", "response", "domain", "harmful", "source_id", "category")
DEFAULT_CATEGORY = "*"
SOURCES_ACCEPTED = (
    "accepted: a .jsonl, .json, .csv or .parquet file, a folder written by `datasets` save_to_disk, "
    "a hub id like 'owner/name', 'package:<python package>/<file>', 'builtin:<split>', "
    "or a suite YAML file (with split: dev, test or all)"
)
PACKAGE_PREFIX = "package:"
"""`path` (or `mapping_file`) prefix naming a file inside an installed Python package, e.g.
``package:ema_lightning/assets/public/harmbench.csv``: the same ``package:<name>`` scheme as
`Backbone.name_or_path`, followed by the file's path inside the package's folder."""
PACKAGE_EXAMPLE = "package:ema_lightning/assets/public/harmbench.csv"
_SAVED_DATASET_FILES = (("dataset_info.json", "state.json"), ("dataset_dict.json",))
"""A folder is a saved `datasets` Dataset when it holds both files of the first tuple, a DatasetDict with the second (what load_from_disk checks)."""
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass
class RecordSource:
    """One set of prompts (a file, a `datasets` dataset, or the built-in data) and how its rows become Records.

    The domain of a row is decided in this order: the fixed `domain`; else the first
    `category_overrides` column whose value is listed in its map; else `category_to_domain` applied
    to the `category` column (after `category_delimiter`); else the `domain` column. A category
    value mapped to null drops the row (counted and logged). A value missing from the mapping is an
    error, unless the mapping has a "*" key, whose domain (or null) then applies (counted, warned).
    Relative paths are relative to the working directory; ``package:<python package>/<file>`` names a
    file inside an installed package wherever you run from: the configs under configs/data/external
    read the public prompt sets shipped in ``package:ema_lightning/assets/public/`` (see its README).
    """

    path: str
    """File (.jsonl/.json/.csv/.parquet), a `datasets` dir saved with save_to_disk, a hub id, "package:<python package>/<file>",
    "builtin:<split>", or a suite (.yaml: several mapped sources merged and deduplicated, `data/suite.py`)."""
    format: str | None = None
    """jsonl | json | csv | parquet | datasets | builtin | suite (default: from the path)."""
    split: str | None = None
    """Split of a `datasets` dataset (default: "train" when the dataset has several); of a suite: dev, test or all."""
    columns: dict[str, str] = field(default_factory=dict)
    """Record field -> column name, for prompt, response, domain, harmful, source_id, category (default: same name)."""
    domain: str | None = None
    """Fixed domain for every row (overrides any column)."""
    harmful: bool | None = None
    """Fixed harmful flag for every row (overrides the harmful column)."""
    category_to_domain: dict[str, str | None] | None = None
    """Category value -> domain id; null drops the row; a "*" key is the default for unlisted values."""
    category_delimiter: str | None = None
    """Keep only the category text before the first occurrence of this string (e.g. ":")."""
    category_overrides: dict[str, dict[str, str | None]] | None = None
    """Column -> {value -> domain or null}; checked in order before the category mapping, unlisted values fall through."""
    mapping_file: str | None = None
    """YAML or JSON file with any of these fields; explicit fields win over it."""
    limit: int | None = None
    """Keep at most this many records (the first ones after mapping)."""
    seed: int = 0
    """Seed of the built-in data."""

    def __post_init__(self) -> None:
        validate_source(self)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> RecordSource:
        """A source from a YAML/JSON file of RecordSource fields (e.g. configs/data/external/*.yaml)."""
        values = {**_read_mapping_file(str(path)), **overrides}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise RecordError(str(path), None, sorted(unknown)[0], "unknown key", f"accepted: {', '.join(f.name for f in fields(cls))}")
        if "path" not in values:
            raise RecordError(str(path), None, "path", "missing", "a source file needs a 'path'")
        return cls(**values)


@dataclass
class LoadReport:
    """Counts of one load, for logs: rows read, records kept, rows dropped by the mapping, defaulted, duplicates."""

    rows: int = 0
    records: int = 0
    dropped: Counter = field(default_factory=Counter)
    """Reason -> rows dropped: `column=value` for a category that maps to null; for a suite,
    `<member>: <why>` (duplicate, near-duplicate, harmful/benign conflict) and `not in split <s>`."""
    defaulted: Counter = field(default_factory=Counter)
    """Category value -> rows that took the "*" default because the value was not in the mapping."""
    duplicates: int = 0

    def update(self, other: LoadReport) -> None:
        self.rows += other.rows
        self.records += other.records
        self.dropped.update(other.dropped)
        self.defaulted.update(other.defaulted)
        self.duplicates += other.duplicates


def validate_source(source: RecordSource) -> None:
    """Check a source's settings without reading any file (runs when the source is built)."""
    where = f"RecordSource({source.path!r})"
    if not isinstance(source.path, str) or not source.path.strip():
        raise RecordError(where, None, "path", "empty path", "a file, a datasets dir, a hub id or 'builtin:<split>'")
    if source.path.startswith(PACKAGE_PREFIX):
        _split_package_path(source.path)
    if source.format is not None and source.format not in FORMATS:
        raise RecordError(where, None, "format", f"unknown format {source.format!r}", f"accepted: {', '.join(FORMATS)}")
    unknown = set(source.columns) - set(COLUMN_KEYS)
    if unknown:
        raise RecordError(where, None, "columns", f"unknown Record field(s) {sorted(unknown)}", f"accepted keys: {', '.join(COLUMN_KEYS)}")
    if source.domain is not None:
        source.domain = parse_domain(source.domain, path=where, field="domain")
    for name, mapping in _mappings(source):
        for key, value in mapping.items():
            if value is not None:
                mapping[key] = parse_domain(value, path=where, field=f"{name}[{key!r}]")
    if source.limit is not None and source.limit < 1:
        raise RecordError(where, None, "limit", f"limit must be positive, got {source.limit}", "accepted: a positive integer or null")


def _mappings(source: RecordSource) -> Iterator[tuple[str, dict[str, str | None]]]:
    if source.category_to_domain:
        yield "category_to_domain", source.category_to_domain
    for column, mapping in (source.category_overrides or {}).items():
        yield f"category_overrides[{column!r}]", mapping


def source_format(source: RecordSource) -> str:
    if source.format:
        return source.format
    if source.path.startswith("builtin:"):
        return "builtin"
    suffix = Path(source.path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    return "datasets"


def _split_package_path(path: str, field: str = "path") -> tuple[str, str]:
    """(package, path inside it) of ``package:<package>/<inner path>``; a RecordError when malformed."""
    package, _, inner = path[len(PACKAGE_PREFIX):].strip().partition("/")
    if not package.isidentifier() or not inner.strip("/") or Path(inner).is_absolute() or ".." in Path(inner).parts:
        raise RecordError(
            path, None, field, "expected package:<top-level Python package>/<file inside its folder>",
            f"e.g. {PACKAGE_EXAMPLE}",
        )
    return package, inner


def package_path(path: str, field: str = "path") -> str:
    """The file named by ``package:<package>/<inner path>``, in the folder of the installed Python
    package (found without importing it, as `Backbone` finds ``package:<name>``), so a config can
    name a shipped file independent of the working directory; any other path is returned unchanged.
    A RecordError names the package or the file when it is missing."""
    if not path.startswith(PACKAGE_PREFIX):
        return path
    package, inner = _split_package_path(path, field)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    folder: str | None = None
    if spec is not None and spec.submodule_search_locations:
        folder = next(iter(spec.submodule_search_locations))
    if folder is None:
        why = "is not installed" if spec is None else "is a module, not a package with a folder"
        raise RecordError(path, None, field, f"Python package {package!r} {why}",
                          f"install it (pip install {package.replace('_', '-')}) or give a file path")
    file = Path(folder) / inner
    if not file.exists():
        parent = next((p for p in file.parents if p.is_dir()), Path(folder))
        entries = sorted(entry.name for entry in parent.iterdir() if not entry.name.startswith(("_", ".")))
        shown = ", ".join(entries[:12]) + (", ..." if len(entries) > 12 else "")
        raise RecordError(path, None, field, f"no file {inner!r} in package {package!r} (looked for {file})",
                          f"{parent} holds: {shown or 'nothing'}")
    return str(file)


def _read_mapping_file(path: str) -> dict[str, Any]:
    path = package_path(path, "mapping_file")
    file = Path(path)
    if not file.is_file():
        raise RecordError(path, None, None, "mapping file not found", "give an existing YAML or JSON file")
    text = _decode_utf8(path, file.read_bytes())
    try:
        if file.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as error:  # json.JSONDecodeError or yaml.YAMLError
        raise RecordError(path, None, None, f"cannot parse: {error}", "a YAML or JSON mapping") from None
    if not isinstance(values, dict):
        raise RecordError(path, None, None, "expected a mapping of RecordSource fields", "keys like columns, category_to_domain, domain, harmful")
    return values


def resolve_source(source: RecordSource) -> RecordSource:
    """Merge the mapping file under the explicit fields (explicit fields win; dicts are merged key by key)."""
    if not source.mapping_file:
        return source
    values = _read_mapping_file(source.mapping_file)
    names = {f.name for f in fields(RecordSource)} - {"mapping_file"}
    unknown = set(values) - names
    if unknown:
        raise RecordError(source.mapping_file, None, sorted(unknown)[0], "unknown key", f"accepted: {', '.join(sorted(names))}")
    merged: dict[str, Any] = {"path": source.path, "mapping_file": None}
    for f in fields(RecordSource):
        if f.name in merged:
            continue
        explicit, from_file = getattr(source, f.name), values.get(f.name)
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if isinstance(explicit, dict) and isinstance(from_file, dict):
            merged[f.name] = {**from_file, **explicit}
        elif explicit != default or f.name not in values:
            merged[f.name] = explicit
        else:
            merged[f.name] = from_file
    return RecordSource(**merged)


# ---- raw rows: (line, dict) per format ------------------------------------------------------


def _require_file(path: str, kind: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise RecordError(path, None, None, "file not found", f"give an existing path (working directory: {Path.cwd()})")
    if file.is_dir() and kind != "parquet":  # a folder of Parquet parts is one table to pandas
        hint = " (it is a saved `datasets` folder: set format: datasets)" if _is_saved_dataset(file) else ""
        raise RecordError(path, None, None, f"is a folder, not a {kind} file{hint}", SOURCES_ACCEPTED)
    return file


def _decode_utf8(path: str, data: bytes) -> str:
    """UTF-8 text, with or without the byte-order mark that Excel's "CSV UTF-8" writes; else an error naming the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = len((data[: error.start] + b"_").splitlines())  # the lines before the bad byte, plus its own
        converted = Path(path).with_name(f"{Path(path).stem}.utf8{Path(path).suffix}")
        raise RecordError(
            path, line, None, f"not UTF-8: byte 0x{data[error.start]:02x} cannot be decoded ({error.reason})",
            f"the file must be UTF-8: re-save it as UTF-8 (Excel: 'CSV UTF-8'), or convert it, e.g. from Latin-1: iconv -f latin1 -t utf-8 {path} > {converted}",
        ) from None


def _read_text(path: str, kind: str) -> str:
    return _decode_utf8(path, _require_file(path, kind).read_bytes())


def _rows_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    # newline=None splits lines as a file opened in text mode does (\n, \r\n, \r), unlike str.splitlines.
    for number, text in enumerate(io.StringIO(_read_text(path, "jsonl"), newline=None), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            raise RecordError(path, number, "<json>", f"invalid JSON ({error.msg} at column {error.colno})", "accepted: one JSON object per line") from None
        if not isinstance(row, dict):
            raise RecordError(path, number, "<json>", f"expected a JSON object, got {type(row).__name__}", "accepted: one JSON object per line")
        yield number, row


def _rows_json(path: str) -> Iterator[tuple[int, dict]]:
    text = _read_text(path, "json")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(path, error.lineno, "<json>", f"invalid JSON ({error.msg})", "accepted: a JSON list of objects") from None
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):
        rows = rows["data"]
    if not isinstance(rows, list):
        raise RecordError(path, None, "<json>", f"expected a list of objects, got {type(rows).__name__}", "accepted: a JSON list of objects")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RecordError(path, index, "<json>", f"item {index} is a {type(row).__name__}", "accepted: a JSON list of objects")
        yield index, row


def _cell_counts(cells: int, header: list[str]) -> str:
    return f"the row has {cells} cell{'s' if cells != 1 else ''} but the header has {len(header)} ({', '.join(header)})"


class _ShortCsvRow(dict):
    """A CSV row with fewer cells than the header: the columns without a cell are absent, so an optional one stays missing."""

    def __init__(self, values: dict[str, str], header: list[str], cells: int) -> None:
        super().__init__(values)
        self.header = header
        self.cells = cells

    def no_cell_error(self, path: str, line: int, column: str) -> RecordError:
        return RecordError(
            path, line, column, f"no cell for this column: {_cell_counts(self.cells, self.header)}",
            "give every row one cell per header column (an empty cell is nothing between two commas), and quote a field that holds a comma or a line break",
        )


def _rows_csv(path: str) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(_read_text(path, "csv"), newline=""))
    header = next(reader, None)
    if header is None:
        return
    start = reader.line_num + 1
    for cells in reader:
        # line_num counts physical lines, so a row whose quoted cell spans lines keeps its first line.
        line, start = start, reader.line_num + 1
        if not cells:  # a blank line, skipped as csv.DictReader does
            continue
        if any(cell.strip() for cell in cells[len(header):]):  # blank trailing cells ("a,b,c,") lose nothing
            raise RecordError(
                path, line, None, _cell_counts(len(cells), header),
                'quote a field that holds a comma, e.g. "Tell me, step by step, ..." (a quote inside it is written "")',
            )
        row = dict(zip(header, cells))
        yield line, (row if len(cells) >= len(header) else _ShortCsvRow(row, header, len(cells)))


def _rows_parquet(path: str) -> Iterator[tuple[int, dict]]:
    import pandas as pd

    frame = pd.read_parquet(_require_file(path, "parquet"))
    yield from enumerate(frame.to_dict("records"))


def _is_saved_dataset(folder: Path) -> bool:
    return any(all((folder / name).is_file() for name in names) for names in _SAVED_DATASET_FILES)


def _check_datasets_path(source: RecordSource) -> bool:
    """True for a saved `datasets` folder, False for a hub id; a RecordError for anything else."""
    path = Path(source.path)
    if path.is_dir():
        if _is_saved_dataset(path):
            return True
        entries = sorted(entry.name for entry in path.iterdir())
        held = f"it holds {', '.join(entries[:8])}{', ...' if len(entries) > 8 else ''}" if entries else "it is empty"
        needed = " or ".join(" and ".join(names) for names in _SAVED_DATASET_FILES)
        raise RecordError(source.path, None, None, f"folder is not a saved `datasets` dataset (no {needed}; {held})", SOURCES_ACCEPTED)
    if path.exists():
        if source.format == "datasets":
            raise RecordError(source.path, None, "format", "is a file, but format: datasets needs a folder written by save_to_disk", SOURCES_ACCEPTED)
        suffix = repr(path.suffix) if path.suffix else "(none)"
        raise RecordError(
            source.path, None, None, f"unknown file suffix {suffix}",
            f"{SOURCES_ACCEPTED}; or set format: jsonl, json, csv or parquet to read this file as one",
        )
    if not _HUB_ID.fullmatch(source.path):
        raise RecordError(source.path, None, None, "no such file or folder", f"give an existing path (working directory: {Path.cwd()}); {SOURCES_ACCEPTED}")
    return False


def _rows_datasets(source: RecordSource) -> Iterator[tuple[int, dict]]:
    saved = _check_datasets_path(source)
    import datasets

    if saved:
        data = datasets.load_from_disk(source.path)
    else:
        try:
            data = datasets.load_dataset(source.path, split=source.split or "train")
        except Exception as error:
            problem = " ".join(f"no such file or folder, and loading it as a `datasets` hub id failed: {error}".split())
            raise RecordError(source.path, None, None, problem, SOURCES_ACCEPTED) from None
    if isinstance(data, datasets.DatasetDict):
        split = source.split or ("train" if "train" in data else None)
        if split not in data:
            raise RecordError(source.path, None, "split", f"split {source.split!r} not found", f"accepted: {', '.join(data)}")
        data = data[split]
    yield from enumerate(data)


def _raw_rows(source: RecordSource, kind: str) -> Iterator[tuple[int, dict]]:
    if kind == "jsonl":
        return _rows_jsonl(source.path)
    if kind == "json":
        return _rows_json(source.path)
    if kind == "csv":
        return _rows_csv(source.path)
    if kind == "parquet":
        return _rows_parquet(source.path)
    return _rows_datasets(source)


# ---- mapping rows to records ----------------------------------------------------------------


def _category_domain(source: RecordSource, row: Mapping[str, Any], line: int, report: LoadReport) -> tuple[bool, str | None]:
    """(decided, domain) for a row from overrides and the category mapping; domain None with decided=True drops the row."""
    for column, mapping in (source.category_overrides or {}).items():
        value = row.get(column)
        if not is_missing(value) and str(value).strip() in mapping:
            domain = mapping[str(value).strip()]
            if domain is None:
                report.dropped[f"{column}={str(value).strip()}"] += 1
            return True, domain
    if source.category_to_domain is None:
        return False, None
    column = source.columns.get("category", "category")
    if column not in row or is_missing(row[column]):
        raise RecordError(source.path, line, column, "missing category value", f"the row needs a '{column}' column (category_to_domain is set)")
    value = str(row[column])
    if source.category_delimiter:
        value = value.split(source.category_delimiter, 1)[0]
    value = value.strip()
    mapping = source.category_to_domain
    if value in mapping:
        domain = mapping[value]
    elif DEFAULT_CATEGORY in mapping:
        domain = mapping[DEFAULT_CATEGORY]
        report.defaulted[value] += 1
    else:
        keys = ", ".join(repr(k) for k in mapping)
        raise RecordError(source.path, line, column, f"category {value!r} is not in category_to_domain", f"accepted: {keys} (or add a '*' default key)")
    if domain is None:
        report.dropped[f"{column}={value}"] += 1
    return True, domain


def _builtin(source: RecordSource) -> list[Record]:
    from ema_lightning.data.builtin import builtin_records

    split = source.path.split(":", 1)[1] if source.path.startswith("builtin:") else (source.split or source.path)
    return list(builtin_records(split, seed=source.seed))


def _row_record(source: RecordSource, row: Mapping[str, Any], line: int, report: LoadReport) -> Record | None:
    """The Record of one raw row, or None when its category maps to no domain (counted in `report`)."""
    domain = source.domain
    if domain is None:
        decided, domain = _category_domain(source, row, line, report)
        if decided and domain is None:
            return None
    return make_record(row, source.columns, path=source.path, line=line, domain=domain, harmful=source.harmful)


def load_records(source: RecordSource | str, report: LoadReport | None = None) -> list[Record]:
    """Load and validate the records of one source; raise RecordError naming file, line and field."""
    if isinstance(source, str):
        source = RecordSource(path=source)
    source = resolve_source(source)
    validate_source(source)
    kind = source_format(source)
    if source.path.startswith(PACKAGE_PREFIX):
        source = replace(source, path=package_path(source.path))
    local = LoadReport()
    if kind in ("suite", "builtin"):
        if kind == "suite":
            records, suite = load_suite(source.path, source.split)
            local.rows = sum(m.rows for m in suite.members)
            for m in suite.members:  # every row read is a record or a counted drop
                for why, count in (("no domain", m.rows - m.mapped), ("duplicate", m.duplicates),
                                   ("near-duplicate", m.near_duplicates), ("harmful/benign conflict", m.conflicts)):
                    if count:
                        local.dropped[f"{m.name}: {why}"] += count
            if sum(m.kept for m in suite.members) > len(records):
                local.dropped[f"not in split {source.split}"] += sum(m.kept for m in suite.members) - len(records)
        else:
            records = _builtin(source)
            local.rows = len(records)
        if source.domain is not None or source.harmful is not None:
            records = [
                Record(r.prompt, source.domain or r.domain, r.harmful if source.harmful is None else source.harmful, r.response, r.source_id)
                for r in records
            ]
    else:
        records = []
        for line, row in _raw_rows(source, kind):
            local.rows += 1
            try:
                record = _row_record(source, row, line, local)
            except RecordError as error:
                if isinstance(row, _ShortCsvRow) and error.field in row.header[row.cells :]:
                    raise row.no_cell_error(source.path, line, error.field) from None
                raise
            if record is None:
                continue
            records.append(record)
            if source.limit is not None and len(records) >= source.limit:
                break
    if source.limit is not None:
        records = records[: source.limit]
    if not records:
        raise RecordError(source.path, None, None, f"empty split: no records after mapping ({local.rows} rows read, {sum(local.dropped.values())} dropped)", "a source must give at least one record")
    local.records = len(records)
    _log_report(source.path, local)
    if report is not None:
        report.update(local)
    return records


def load_suite(path: str, split: str | None) -> tuple[list[Record], SuiteReport]:
    """The records of one split of the suite file at `path` (`data/suite.py`: its members loaded here,
    merged without duplicates, split) and the suite's report; a RecordError names a bad split."""
    if split not in SPLITS:
        raise RecordError(path, None, "split", f"a suite needs split: dev, test or all, got {split!r}",
                          "dev for evaluation during training, test for the report")
    splits, report = read_suite(path)
    return splits[split], report


def read_suite(path: str) -> tuple[dict[str, list[Record]], SuiteReport]:
    """Every split of the suite file at `path`, and its report."""
    suite = PromptSuite.from_values(_read_mapping_file(path), package_path(path))
    members = []
    for fields_ in suite.member_fields():
        name = Path(fields_.get("mapping_file") or fields_.get("path", "")).stem
        source = RecordSource(**fields_) if "path" in fields_ else RecordSource.from_file(fields_.pop("mapping_file"), **fields_)
        loaded = LoadReport()
        records = load_records(source, loaded)
        members.append((name, loaded.rows, records))
    return suite.merge(members)


def _log_report(path: str, report: LoadReport) -> None:
    log.info("%s: %d rows read, %d records kept", path, report.rows, report.records)
    if report.dropped:
        log.info("%s: dropped %d rows (reason: rows): %s", path, sum(report.dropped.values()), dict(report.dropped))
    if report.defaulted:
        log.warning("%s: %d rows had categories not in the mapping and took the '*' default: %s", path, sum(report.defaulted.values()), dict(report.defaulted))


def _prompt_key(record: Record) -> tuple[str, bool]:
    return " ".join(record.prompt.split()), record.harmful


def drop_duplicates(records: Iterable[Record]) -> tuple[list[Record], int]:
    """Keep the first record of each (whitespace-normalised prompt, harmful) pair; return (kept, number dropped)."""
    seen: set[tuple[str, bool]] = set()
    kept: list[Record] = []
    dropped = 0
    for record in records:
        key = _prompt_key(record)
        if key in seen:
            dropped += 1
        else:
            seen.add(key)
            kept.append(record)
    return kept, dropped


def load_all(sources: Iterable[RecordSource | str], what: str = "train", report: LoadReport | None = None) -> list[Record]:
    """Concatenate the records of several sources and drop duplicate prompts (counted and logged)."""
    local = LoadReport()
    records: list[Record] = []
    for source in sources:
        records.extend(load_records(source, local))
    kept, duplicates = drop_duplicates(records)
    local.duplicates = duplicates
    local.records = len(kept)
    if duplicates:
        log.info("%s: dropped %d duplicate prompts (same text and harmful flag) of %d records", what, duplicates, len(records))
    if report is not None:
        report.update(local)
    return kept


__all__ = [
    "DOMAINS_ACCEPTED",
    "FORMATS",
    "PACKAGE_PREFIX",
    "SOURCES_ACCEPTED",
    "LoadReport",
    "RecordSource",
    "drop_duplicates",
    "load_all",
    "load_suite",
    "load_records",
    "package_path",
    "read_suite",
    "resolve_source",
    "source_format",
    "validate_source",
]
