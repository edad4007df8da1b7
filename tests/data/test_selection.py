"""SetSelection: canonical domains, the DataModule's error texts, and the pure selection functions."""

import dataclasses
from collections import Counter

import pytest

from ema_lightning.data.records import Record, RecordError
from ema_lightning.data.selection import SetSelection, cap_eval, domain_counts, select_forget, select_retain
from ema_lightning.domains import DOMAINS


def test_set_selection_canonicalises_and_is_frozen():
    selection = SetSelection(target_domain="Cyber", retain_domains=["toxic", "Bias"], retain_size=0)
    assert selection.target_domain == "cybersecurity" and selection.retain_domains == ("toxicity", "bias")
    with pytest.raises(dataclasses.FrozenInstanceError):
        selection.seed = 3
    assert hash(selection) == hash(SetSelection("cybersecurity", ("toxicity", "bias"), 0))


@pytest.mark.parametrize("kwargs, match", [
    ({"target_domain": "astrology"}, "RefusalDataModule: field 'target_domain': unknown domain 'astrology'"),
    ({"retain_domains": ["bias", "astrology"]}, "RefusalDataModule: field 'retain_domains': unknown domain 'astrology'"),
    ({"target_domain": "bias", "retain_domains": ["bias"]}, "field 'retain_domains': contains the target domain 'bias'"),
    ({"forget_size": 0}, "RefusalDataModule: field 'forget_size': must be >= 1 or null, got 0"),
    ({"eval_per_domain": 0}, "RefusalDataModule: field 'eval_per_domain': must be >= 1 or null, got 0"),
    ({"seed": -1}, "RefusalDataModule: field 'seed': must be >= 0, got -1"),
])
def test_set_selection_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SetSelection(**kwargs)


RECORDS = [Record(f"{d} {h} {i}", d, h, "r") for d in DOMAINS for h in (True, False) for i in range(3)]


def test_select_forget_retain_and_eval_cap():
    selection = SetSelection(target_domain="privacy", forget_size=2, retain_size=12, eval_per_domain=1, seed=4)
    forget = select_forget(RECORDS, selection, "train.jsonl")
    assert len(forget) == 2 and {r.domain for r in forget} == {"privacy"}
    assert forget == select_forget(RECORDS, selection, "train.jsonl")  # seeded
    retain = select_retain(RECORDS, selection)
    assert Counter((r.domain, r.harmful) for r in retain) == Counter({(d, h): 1 for d in DOMAINS if d != "privacy" for h in (True, False)})
    assert Counter((r.domain, r.harmful) for r in cap_eval(RECORDS, selection)) == Counter({(d, h): 1 for d in DOMAINS for h in (True, False)})
    assert select_forget(RECORDS, SetSelection(), "train.jsonl") == []
    assert select_retain(RECORDS, SetSelection(retain_size=0)) == []
    with pytest.raises(RecordError, match="train.jsonl: field 'domain': empty split: no forget records in domain 'bias'"):
        select_forget([r for r in RECORDS if r.domain != "bias"], SetSelection(target_domain="bias"), "train.jsonl")
    assert domain_counts(forget) == "privacy 2" and domain_counts([]) == "none"
