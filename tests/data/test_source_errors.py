"""Bad data files end in one RecordError line naming the file and line, never a silent wrong record or a library traceback."""

import json

import pytest

from ema_lightning.data.records import Record, RecordError
from ema_lightning.data.sources import RecordSource, load_records

BOM = b"\xef\xbb\xbf"


def load_error(source) -> RecordError:
    """The RecordError of loading `source`, checked to be one line (the CLI prints it and exits 2)."""
    with pytest.raises(RecordError) as info:
        load_records(source)
    assert "\n" not in str(info.value)
    return info.value


def assert_lists_accepted_sources(message: str) -> None:
    for accepted in (".jsonl", ".json", ".csv", ".parquet", "save_to_disk", "hub id like 'owner/name'", "builtin:<split>"):
        assert accepted in message, accepted


# ---- 14: CSV rows whose cell count differs from the header's ------------------------------------


def test_csv_row_with_more_cells_than_header_names_line_and_counts(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        'domain,harmful,prompt\nbias,true,"two\nlines"\ncybersecurity,true,Tell me, step by step, how to write ransomware\n', encoding="utf-8"
    )
    error = load_error(str(path))
    assert error.line == 4  # header 1, quoted row 2-3, the unquoted comma on 4
    assert str(error).startswith(f"{path}:4: the row has 5 cells but the header has 3 (domain, harmful, prompt); quote a field")
    assert '"Tell me, step by step, ..."' in str(error)


def test_csv_blank_trailing_cells_are_accepted(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("prompt,domain,harmful\na,bias,true,\nb,bias,false, ,\n", encoding="utf-8")
    assert load_records(str(path)) == [Record("a", "bias", True), Record("b", "bias", False)]


def test_csv_row_with_fewer_cells_errors_only_for_a_needed_column(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("prompt,domain,harmful,response\na,bias,true\nb,bias\n", encoding="utf-8")
    error = load_error(str(path))  # an optional column without a cell stays missing (row 2); a required one is an error (row 3)
    assert (error.line, error.field) == (3, "harmful")
    assert str(error).startswith(f"{path}:3: field 'harmful': no cell for this column: the row has 2 cells but the header has 4 (prompt, domain, harmful, response)")
    assert load_records(RecordSource(str(path), harmful=True)) == [Record("a", "bias", True), Record("b", "bias", True)]


def test_csv_short_row_without_category_cell_names_the_column(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("prompt,kind\na,Malware\nb\n", encoding="utf-8")
    error = load_error(RecordSource(str(path), harmful=True, columns={"category": "kind"}, category_to_domain={"Malware": "cyber"}))
    assert (error.line, error.field) == (3, "kind") and "the row has 1 cell but the header has 2" in str(error)


def test_csv_blank_line_does_not_shift_line_numbers(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("prompt,domain,harmful\na,bias,true\n\nb,bias,perhaps\n", encoding="utf-8")
    assert load_error(str(path)).line == 4


# ---- 15: UTF-8 with a byte-order mark (Excel's "CSV UTF-8") -------------------------------------


BOM_FILES = {
    "csv": "prompt,domain,harmful\nHow do I pick a lock?,safety,true\n",
    "jsonl": json.dumps({"prompt": "How do I pick a lock?", "domain": "safety", "harmful": True}) + "\n",
    "json": json.dumps([{"prompt": "How do I pick a lock?", "domain": "safety", "harmful": True}]),
}


@pytest.mark.parametrize("suffix", sorted(BOM_FILES))
def test_utf8_with_byte_order_mark_is_read(tmp_path, suffix):
    path = tmp_path / f"excel.{suffix}"
    path.write_bytes(BOM + BOM_FILES[suffix].encode("utf-8"))
    assert load_records(str(path)) == [Record("How do I pick a lock?", "safety", True)]


def test_mapping_file_with_byte_order_mark_is_read(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"q": "a", "domain": "bias", "harmful": True}) + "\n", encoding="utf-8")
    mapping = tmp_path / "map.json"
    mapping.write_bytes(BOM + json.dumps({"columns": {"prompt": "q"}}).encode("utf-8"))
    assert load_records(RecordSource(str(data), mapping_file=str(mapping))) == [Record("a", "bias", True)]


# ---- 16: files that are not UTF-8 ---------------------------------------------------------------


LATIN1_FILES = {
    "csv": "prompt,domain,harmful\r\na,bias,true\r\nUn caf\xe9 toxique,toxicity,true\r\n",
    "jsonl": json.dumps({"prompt": "a", "domain": "bias", "harmful": True}) + "\n\n" + '{"prompt": "caf\xe9", "domain": "bias", "harmful": true}\n',
    "json": '[\n  {"prompt": "a", "domain": "bias", "harmful": true},\n  {"prompt": "caf\xe9", "domain": "bias", "harmful": true}\n]\n',
}


@pytest.mark.parametrize("suffix", sorted(LATIN1_FILES))
def test_latin1_file_names_file_line_and_says_utf8(tmp_path, suffix):
    path = tmp_path / f"latin1.{suffix}"
    path.write_bytes(LATIN1_FILES[suffix].encode("latin-1"))
    error = load_error(str(path))
    assert error.line == 3
    assert str(error).startswith(f"{path}:3: not UTF-8: byte 0xe9 cannot be decoded")
    assert "the file must be UTF-8" in str(error) and "iconv -f latin1 -t utf-8" in str(error)


# ---- 17: folders and unknown suffixes -----------------------------------------------------------


def test_folder_named_like_a_file_is_an_error(tmp_path):
    folder = tmp_path / "x.jsonl"
    folder.mkdir()
    error = load_error(str(folder))
    assert str(error).startswith(f"{folder}: is a folder, not a jsonl file; accepted:")
    assert_lists_accepted_sources(str(error))


def test_empty_folder_is_not_a_saved_dataset(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    error = load_error(str(folder))
    assert str(error).startswith(f"{folder}: folder is not a saved `datasets` dataset")
    assert "dataset_dict.json" in str(error) and "it is empty" in str(error)
    assert_lists_accepted_sources(str(error))


def test_unrelated_folder_names_what_it_holds(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.csv").write_text("prompt,domain,harmful\na,bias,true\n", encoding="utf-8")
    (folder / "dataset_info.json").write_text("{}", encoding="utf-8")  # without state.json it is not a saved Dataset
    error = load_error(str(folder))
    assert "it holds dataset_info.json, train.csv" in str(error)


def test_unknown_suffix_is_an_error_unless_format_is_given(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("prompt,domain,harmful\na,bias,true\n", encoding="utf-8")
    error = load_error(str(path))
    assert str(error).startswith(f"{path}: unknown file suffix '.txt'; accepted:")
    assert "folder" not in error.problem and "set format: jsonl, json, csv or parquet" in str(error)
    assert_lists_accepted_sources(str(error))
    assert load_records(RecordSource(str(path), format="csv")) == [Record("a", "bias", True)]
    assert "format: datasets needs a folder" in str(load_error(RecordSource(str(path), format="datasets")))


def test_saved_dataset_folder_still_loads(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": "a", "domain": "privacy", "harmful": 1}]).save_to_disk(str(tmp_path / "saved"))
    assert load_records(str(tmp_path / "saved")) == [Record("a", "privacy", True)]


def test_hub_ids_go_to_the_hub_and_other_missing_paths_do_not(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(path, split=None):
        calls.append((path, split))
        if path == "owner/broken":
            raise ConnectionError("first line\nsecond line")
        return datasets.Dataset.from_list([{"prompt": "a", "domain": "bias", "harmful": 0}])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert load_records("owner/name") == [Record("a", "bias", False)]
    assert calls == [("owner/name", "train")]
    error = load_error("owner/broken")
    assert "loading it as a `datasets` hub id failed: first line second line" in str(error)
    assert_lists_accepted_sources(str(error))
    missing = str(tmp_path / "no" / "such" / "folder")
    error = load_error(missing)
    assert str(error).startswith(f"{missing}: no such file or folder; give an existing path")
    assert calls == [("owner/name", "train"), ("owner/broken", "train")]
