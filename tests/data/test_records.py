"""Record validation: every accepted spelling, and errors that name file, line and field and say what is accepted."""

import numpy as np
import pytest

from ema_lightning.data.records import Record, RecordError, make_record, parse_domain, parse_harmful
from ema_lightning.domains import DOMAINS


def test_record_error_message_names_file_line_field_and_accepted():
    error = RecordError("data/x.jsonl", 7, "harmful", "cannot read 'maybe'", "accepted: true/false")
    assert str(error) == "data/x.jsonl:7: field 'harmful': cannot read 'maybe'; accepted: true/false"
    assert (error.path, error.line, error.field) == ("data/x.jsonl", 7, "harmful")
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False), (" yes ", True),
     ("no", False), ("harmful", True), ("Benign", False), ("1", True), ("0", False), (np.bool_(True), True), (np.int64(0), False)],
)
def test_parse_harmful_accepts(value, expected):
    assert parse_harmful(value) is expected


@pytest.mark.parametrize("value", ["maybe", 2, None, "", 0.5])
def test_parse_harmful_rejects_with_what_is_accepted(value):
    with pytest.raises(RecordError) as info:
        parse_harmful(value, path="f.csv", line=3)
    message = str(info.value)
    assert message.startswith("f.csv:3: field 'harmful'")
    assert "'harmful'/'benign'" in message and "'yes'/'no'" in message


def test_parse_domain_canonicalises_and_lists_the_seven_when_unknown():
    assert parse_domain("Medical/Legal") == "medical_legal"
    assert parse_domain("cyber") == "cybersecurity"
    with pytest.raises(RecordError) as info:
        parse_domain("astrology", path="p.jsonl", line=2, field="topic")
    message = str(info.value)
    assert message.startswith("p.jsonl:2: field 'topic': unknown domain 'astrology'")
    assert all(domain in message for domain in DOMAINS)


def test_make_record_with_column_mapping():
    row = {"q": "How do I pick a lock?", "area": "Safety", "label": "harmful", "answer": "I can't help.", "id": 12}
    record = make_record(row, {"prompt": "q", "domain": "area", "harmful": "label", "response": "answer", "source_id": "id"})
    assert record == Record("How do I pick a lock?", "safety", True, "I can't help.", "12")
    assert record.to_dict()["domain"] == "safety"


def test_make_record_fixed_values_replace_columns_and_empty_response_is_none():
    record = make_record({"prompt": "hi", "response": ""}, domain="bias", harmful=False)
    assert record == Record("hi", "bias", False, None, None)


@pytest.mark.parametrize("row, field, problem", [
    ({"domain": "bias", "harmful": True}, "prompt", "missing value"),
    ({"prompt": "  ", "domain": "bias", "harmful": True}, "prompt", "empty value"),
    ({"prompt": "x", "harmful": True}, "domain", "missing value"),
    ({"prompt": "x", "domain": "bias"}, "harmful", "missing value"),
    ({"prompt": 5, "domain": "bias", "harmful": True}, "prompt", "expected a string"),
])
def test_make_record_missing_or_bad_fields(row, field, problem):
    with pytest.raises(RecordError) as info:
        make_record(row, path="d.jsonl", line=4)
    assert info.value.field == field and info.value.line == 4
    assert str(info.value).startswith(f"d.jsonl:4: field '{field}': {problem}")


def test_record_is_frozen():
    record = Record("p", "bias", True)
    with pytest.raises(Exception):
        record.prompt = "q"
