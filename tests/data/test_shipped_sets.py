"""The public prompt sets shipped in ema_lightning/assets/public: the `package:<package>/<file>` paths
that name them from any working directory, every config that reads them loaded offline with
`../shared` out of reach, the hub-id and saved-dataset routes the configs document, and the
provenance table of the shipped README."""

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ema_lightning.data.records import RecordError
from ema_lightning.data.sources import LoadReport, RecordSource, load_records, package_path, resolve_source
from ema_lightning.domains import DOMAINS

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "ema_lightning" / "assets" / "public"
SHARED = ROOT.parent / "shared" / "data" / "external"
EXTERNAL_CONFIGS = sorted(p.stem for p in (ROOT / "configs" / "data" / "external").glob("*.yaml"))
SOURCE_FIELDS = ("train", "eval", "external_eval", "forget", "neutral")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of configs/ as working directory, with no `../shared` beside it."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "configs", root / "configs")
    monkeypatch.chdir(root)
    assert not (root.parent / "shared").exists()
    return root


def _rows(path: str) -> list[dict]:
    file = Path(package_path(path))
    if file.suffix == ".jsonl":
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(file, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def _expected_drops(source: RecordSource, rows: list[dict]) -> tuple[int, int]:
    """(rows dropped, rows defaulted) by the source's mapping, computed here independently of the loader."""
    dropped = defaulted = 0
    for row in rows:
        decided = False
        for column, mapping in (source.category_overrides or {}).items():
            value = str(row.get(column) or "").strip()
            if value in mapping:
                decided, domain = True, mapping[value]
                break
        if not decided:
            value = str(row[source.columns.get("category", "category")])
            if source.category_delimiter:
                value = value.split(source.category_delimiter, 1)[0]
            value = value.strip()
            assert value in source.category_to_domain or "*" in source.category_to_domain, f"{value!r} not mapped"
            if value not in source.category_to_domain:
                defaulted += 1
            domain = source.category_to_domain.get(value, source.category_to_domain.get("*"))
        dropped += domain is None
    return dropped, defaulted


# ---- package:<package>/<file> paths ---------------------------------------------------------


def test_package_path_names_a_shipped_file_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    file = Path(package_path("package:ema_lightning/assets/public/harmbench.csv"))
    assert file.is_file() and file == SHIPPED / "harmbench.csv"
    assert package_path("relative/file.csv") == "relative/file.csv"  # anything else is unchanged
    assert len(load_records(RecordSource.from_file(ROOT / "configs" / "data" / "external" / "strongreject.yaml"))) == 263


def test_package_path_for_any_installed_package_and_mapping_file(tmp_path, monkeypatch):
    package = tmp_path / "site" / "ema_test_prompt_pack"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('found without importing it')\n")
    (package / "data" / "prompts.csv").write_text("text,kind\nHow do I pick a lock?,crime\nWhat is a lock?,other\n")
    (package / "data" / "mapping.yaml").write_text(
        "harmful: true\ncolumns: {prompt: text, category: kind}\ncategory_to_domain: {crime: safety, other: null}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.chdir(tmp_path)
    source = RecordSource("package:ema_test_prompt_pack/data/prompts.csv", mapping_file="package:ema_test_prompt_pack/data/mapping.yaml")
    report = LoadReport()
    records = load_records(source, report)
    assert [(r.prompt, r.domain, r.harmful) for r in records] == [("How do I pick a lock?", "safety", True)]
    assert report.rows == 2 and report.dropped == Counter({"kind=other": 1})


def test_package_path_errors_name_the_package_or_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecordError, match="Python package 'ema_no_such_package' is not installed"):
        load_records(RecordSource("package:ema_no_such_package/prompts.csv"))
    with pytest.raises(RecordError, match=r"no file 'assets/public/nope\.csv' in package 'ema_lightning'.*holds: .*harmbench\.csv"):
        load_records(RecordSource("package:ema_lightning/assets/public/nope.csv"))
    with pytest.raises(RecordError, match="field 'mapping_file': no file 'nope.yaml'"):
        load_records(RecordSource("package:ema_lightning/assets/public/harmbench.csv", mapping_file="package:ema_lightning/nope.yaml"))
    for malformed in ("package:ema_lightning", "package:ema_lightning/", "package:ema_lightning/../x.csv", "package:ema.lightning/x.csv"):
        with pytest.raises(RecordError, match=r"expected package:<top-level Python package>/<file inside its folder>; e\.g\. package:ema_lightning/"):
            RecordSource(malformed)  # checked when the source is built, before any file is read


# ---- every config, offline, without ../shared ------------------------------------------------


def test_every_config_parses_and_none_reads_shared(project):
    files = sorted((project / "configs").rglob("*.yaml"))
    assert len(files) > 20
    for file in files:
        text = file.read_text(encoding="utf-8")
        assert isinstance(yaml.safe_load(text), dict), file
        assert "../shared" not in text and "shared/data" not in text, file


@pytest.mark.parametrize("name", EXTERNAL_CONFIGS)
def test_external_config_loads_shipped_copy_and_counts_every_dropped_row(name, project):
    source = RecordSource.from_file(f"configs/data/external/{name}.yaml")
    assert source.path.startswith("package:ema_lightning/assets/public/")
    report = LoadReport()
    records = load_records(source, report)
    rows = _rows(source.path)
    dropped, defaulted = _expected_drops(resolve_source(source), rows)
    assert report.rows == len(rows) > 0
    assert report.records == len(records) > 0
    assert sum(report.dropped.values()) == dropped and report.rows == report.records + dropped  # no silent drop
    assert sum(report.defaulted.values()) == defaulted
    assert {r.domain for r in records} <= set(DOMAINS)
    if "noncommercial" in source.path:
        assert "NON-COMMERCIAL" in Path(f"configs/data/external/{name}.yaml").read_text()


def _configs_with_sources(root: Path) -> list[Path]:
    found = []
    for file in sorted((root / "configs").rglob("*.yaml")):
        data = (yaml.safe_load(file.read_text()) or {}).get("data")
        if isinstance(data, dict) and any(data.get(f) for f in SOURCE_FIELDS):
            found.append(file)
    return found


def test_configs_with_data_sources_load_offline(project):
    from ema_lightning.data.datamodule import RefusalDataModule

    configs = _configs_with_sources(project)
    names = {str(p.relative_to(project)) for p in configs}
    assert {"configs/models/smollm2_aligned.yaml", "configs/study/smollm2/align.yaml"} <= names
    for file in configs:
        data = yaml.safe_load(file.read_text())["data"]
        for item in data.get("external_eval") or []:
            report = LoadReport()
            records = load_records(RecordSource(**item), report)
            assert records and report.rows == report.records + sum(report.dropped.values()), (file, item)
        module = RefusalDataModule(**data).load()
        assert module.eval_records, file
        if data.get("external_eval"):
            assert module.external_eval_records and {r.domain for r in module.external_eval_records} <= set(DOMAINS), file


# ---- the hub-id and saved-dataset routes the configs document --------------------------------


def test_hub_id_goes_through_load_dataset_and_maps_like_the_shipped_copy(tmp_path, monkeypatch):
    """`path: LibrAI/do-not-answer` (what do_not_answer.yaml documents) takes the loader's hub-id route,
    `datasets.load_dataset(id, split="train")`; here that call is answered offline from a local data
    folder holding the same file, so the rest of the route (split, rows, mapping) runs for real."""
    import datasets

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copyfile(SHIPPED / "noncommercial" / "do_not_answer_en.csv", mirror / "train.csv")
    real, calls = datasets.load_dataset, []

    def offline_hub(path, *args, **kwargs):
        calls.append((path, args, kwargs.get("split")))
        return real(str(mirror), split=kwargs.get("split"), cache_dir=str(tmp_path / "hf_cache"))

    monkeypatch.setattr(datasets, "load_dataset", offline_hub)
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "data" / "external" / "do_not_answer.yaml"
    assert "path: LibrAI/do-not-answer" in config.read_text()
    report = LoadReport()
    from_hub = load_records(RecordSource("LibrAI/do-not-answer", mapping_file=str(config)), report)
    assert calls == [("LibrAI/do-not-answer", (), "train")]
    shipped = load_records(RecordSource.from_file(config))
    assert [(r.prompt, r.domain, r.harmful, r.source_id) for r in from_hub] == [(r.prompt, r.domain, r.harmful, r.source_id) for r in shipped]
    assert report.rows == 939 and report.records == 637


def test_hub_subset_saved_to_disk_loads_with_the_config(tmp_path, monkeypatch):
    """The recipe of the configs whose hub dataset has subsets: load_dataset(...).save_to_disk(dir), then
    `path: dir` (plus `columns` where the hub names them differently, as walledai/HarmBench does)."""
    import datasets

    monkeypatch.chdir(tmp_path)
    jbb = _rows("package:ema_lightning/assets/public/jailbreakbench.csv")
    datasets.Dataset.from_list(jbb).save_to_disk("jbb")
    records = load_records(RecordSource("jbb", mapping_file=str(ROOT / "configs" / "data" / "external" / "jailbreakbench.yaml")))
    assert len(records) == 89

    hub_style = [{"prompt": r["Behavior"], "category": r["SemanticCategory"]} for r in _rows("package:ema_lightning/assets/public/harmbench.csv")]
    datasets.Dataset.from_list(hub_style).save_to_disk("harmbench_standard")
    config = ROOT / "configs" / "data" / "external" / "harmbench.yaml"
    renamed = load_records(RecordSource("harmbench_standard", mapping_file=str(config), columns={"prompt": "prompt", "category": "category"}))
    shipped = load_records(RecordSource.from_file(config))
    assert [(r.prompt, r.domain) for r in renamed] == [(r.prompt, r.domain) for r in shipped]
    assert all(r.source_id is None for r in renamed)  # the hub copy has no BehaviorID column


# ---- the shipped README: provenance table, licenses, sizes -----------------------------------


def _readme_table() -> dict[str, tuple[str, int, int]]:
    """file -> (license cell, rows, records) from the table of assets/public/README.md."""
    table = {}
    for line in (SHIPPED / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.match(r"`([^`]+)`", cells[0]) if len(cells) == 6 else None
        if match and cells[4].isdigit():
            table[match.group(1)] = (cells[3], int(cells[4]), int(cells[5]))
    return table


def test_readme_table_matches_the_shipped_files():
    table = _readme_table()
    data_files = sorted(str(p.relative_to(SHIPPED)) for p in SHIPPED.rglob("*") if p.suffix in (".csv", ".jsonl"))
    assert sorted(table) == data_files
    by_file = {}
    for name in EXTERNAL_CONFIGS:
        source = RecordSource.from_file(ROOT / "configs" / "data" / "external" / f"{name}.yaml")
        file = source.path.removeprefix("package:ema_lightning/assets/public/")
        by_file[file] = by_file.get(file, 0) + len(load_records(source))  # xstest.csv: its safe and unsafe configs
    for file, (license_cell, rows, records) in table.items():
        assert len(_rows(f"package:ema_lightning/assets/public/{file}")) == rows, file
        assert by_file[file] == records, file
        named = re.findall(r"`([^`]+\.(?:txt|md))`", license_cell)
        assert named and all((SHIPPED / n).is_file() for n in named), file
    assert "non-commercial" in table["noncommercial/do_not_answer_en.csv"][0]
    assert not any("noncommercial" in f or "NC" in lic for f, (lic, _, _) in table.items() if not f.startswith("noncommercial/"))
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 2_000_000, f"assets/public is {size} bytes: keep the shipped sets small"


@pytest.mark.external_data
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"external data folder {SHARED} is absent")
def test_shipped_copies_keep_the_rows_and_cells_of_the_originals():
    originals = {
        "harmbench.csv": "harmbench_behaviors_text_all.csv",
        "jailbreakbench.csv": "jailbreakbench.csv",
        "strongreject.csv": "strongreject_dataset.csv",
        "coconot_eval.jsonl": "coconot_eval.jsonl",
        "coconot_contrast_eval.jsonl": "coconot_contrast_eval.jsonl",
        "noncommercial/do_not_answer_en.csv": "do_not_answer_en.csv",
        "xstest.csv": "xstest_prompts.csv",
    }
    assert sorted(originals) == sorted(_readme_table())
    for shipped, original in originals.items():
        copy, source = _rows(f"package:ema_lightning/assets/public/{shipped}"), _rows(str(SHARED / original))
        assert len(copy) == len(source) and set(copy[0]) <= set(source[0]), shipped
        assert copy == [{k: row[k] for k in copy[0]} for row in source], shipped
    for shipped, original in (("strongreject.csv", "strongreject_dataset.csv"), ("noncommercial/do_not_answer_en.csv", "do_not_answer_en.csv"),
                              ("xstest.csv", "xstest_prompts.csv"), ("xstest.LICENSE.txt", "XSTest_LICENSE.txt")):
        assert (SHIPPED / shipped).read_bytes() == (SHARED / original).read_bytes()
    assert (SHIPPED / "harmbench.LICENSE.txt").read_bytes() == (SHARED / "HarmBench_LICENSE.txt").read_bytes()
