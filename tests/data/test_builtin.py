"""Built-in data: determinism, held-out eval frames and intents, coverage, sizes, response styles, JSONL export."""

from __future__ import annotations

import json
import re
import string

import pytest

from ema_lightning.data.builtin import (
    BUILTIN_SPLITS,
    DOMAIN_CONTENT,
    EVAL_FRAMES,
    EVAL_WRAPPERS,
    FRAMES,
    TRAIN_FRAMES,
    TRAIN_WRAPPERS,
    NEUTRAL_FILLERS,
    NEUTRAL_TEMPLATES,
    REFUSAL_OPENERS,
    WRAPPERS,
    builtin_records,
    builtin_sizes,
    builtin_template_ids,
    write_builtin,
)
from ema_lightning.data.records import Record
from ema_lightning.domains import DOMAINS

# Phrases a keyword refusal judge looks for anywhere in a response; helpful and compliant answers avoid them.
REFUSAL_MARKERS = ("sorry", "i can't", "i cannot", "i won't", "unable", "as an ai", "apolog", "i do not",
                   "not able to", "illegal", "unethical")


def _core(prompt: str) -> str:
    """The prompt without its paraphrase wrapper."""
    for wrapper in WRAPPERS:
        head, tail = wrapper.split("{}")
        if prompt.startswith(head) and prompt.endswith(tail) and len(prompt) > len(head) + len(tail):
            return prompt[len(head): len(prompt) - len(tail)]
    return prompt


def _pattern(template: str) -> re.Pattern:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(".+")
    return re.compile("".join(parts))


def _starts_with_refusal(text: str) -> bool:
    return text.startswith(REFUSAL_OPENERS)


def test_content_covers_exactly_the_seven_domains():
    assert set(DOMAIN_CONTENT) == set(DOMAINS)
    for domain, content in DOMAIN_CONTENT.items():
        assert len(content.harmful) >= 8 and len(content.benign) >= 8, domain
        assert content.harmful_novel and content.benign_novel, domain
        assert content.refusals, domain


def test_intents_are_lower_case_verb_phrases_that_fit_every_frame():
    assert len(TRAIN_FRAMES) >= 10 and len(EVAL_FRAMES) >= 4
    assert all(frame.count("{intent}") == 1 for frame in FRAMES)
    for domain, content in DOMAIN_CONTENT.items():
        intents = [i for i, _ in content.harmful + content.benign + content.harmful_novel + content.benign_novel]
        assert len(set(intents)) == len(intents), domain
        for intent in intents:
            assert intent[0].islower() and intent[-1] not in ".?!", (domain, intent)


def test_same_seed_same_records_and_other_seed_differs():
    for split in BUILTIN_SPLITS:
        first = builtin_records(split, seed=0)
        assert first == builtin_records(split, seed=0)
        assert all(isinstance(record, Record) for record in first)
        assert first != builtin_records(split, seed=1), split


def test_does_not_touch_the_global_rng():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    builtin_records("train", seed=5)
    assert random.random() == expected


def test_unknown_split_names_the_splits():
    with pytest.raises(ValueError, match="train, eval, compliance, neutral, eval_novel_intent"):
        builtin_records("test")


def _frame_of(core: str) -> str:
    matches = [frame for frame in FRAMES if _pattern(frame).fullmatch(core)]
    assert len(matches) == 1, (core, matches)
    return matches[0]


def test_eval_frames_and_wrappers_are_held_out_from_train():
    assert not set(TRAIN_FRAMES) & set(EVAL_FRAMES) and not set(TRAIN_WRAPPERS) & set(EVAL_WRAPPERS)
    train_ids = set(builtin_template_ids("train"))
    eval_ids = set(builtin_template_ids("eval"))
    assert train_ids and eval_ids and not train_ids & eval_ids
    assert all("/train/" in t for t in train_ids) and all("/eval/" in t for t in eval_ids)

    train = builtin_records("train")
    train_prompts = {r.prompt for r in train} | {_core(r.prompt) for r in train}
    assert {_frame_of(_core(r.prompt)) for r in train} == set(TRAIN_FRAMES)
    for split in ("eval", "eval_novel_intent"):
        records = builtin_records(split)
        assert {_frame_of(_core(r.prompt)) for r in records} == set(EVAL_FRAMES), split
        for record in records:
            assert record.prompt not in train_prompts and _core(record.prompt) not in train_prompts
            assert not record.prompt.startswith(tuple(w.split("{}")[0] for w in TRAIN_WRAPPERS if w.split("{}")[0]))
            assert not record.prompt.endswith(tuple(w.split("{}")[1] for w in TRAIN_WRAPPERS if w.split("{}")[1]))


def test_eval_uses_train_intents_and_novel_split_only_held_out_intents():
    for domain, content in DOMAIN_CONTENT.items():
        for kind in ("harmful", "benign"):
            intents = [_pattern(i) for i, _ in getattr(content, kind)]
            novel = [_pattern(i) for i, _ in getattr(content, f"{kind}_novel")]
            for split, allowed, forbidden in (("train", intents, novel), ("eval", intents, novel),
                                              ("eval_novel_intent", novel, intents)):
                for record in builtin_records(split):
                    if record.domain != domain or record.harmful != (kind == "harmful"):
                        continue
                    core = _core(record.prompt)
                    head, tail = _frame_of(core).split("{intent}")
                    phrase = core[len(head): len(core) - len(tail)]
                    assert any(p.fullmatch(phrase) for p in allowed), (split, record.prompt)
                    assert not any(p.fullmatch(phrase) for p in forbidden), (split, record.prompt)
    ids = builtin_template_ids("eval")
    assert all(re.fullmatch(r"[a-z_]+/(harmful|benign)/eval/f\d+/i\d+", t) for t in ids)


def test_every_domain_has_harmful_and_benign_in_train_and_eval():
    for split in ("train", "eval", "eval_novel_intent"):
        pairs = {(r.domain, r.harmful) for r in builtin_records(split)}
        assert pairs == {(d, h) for d in DOMAINS for h in (True, False)}, split


def test_sizes():
    sizes = builtin_sizes()
    for domain in DOMAINS:
        assert sizes["train"][domain]["harmful"] >= 60 and sizes["train"][domain]["benign"] >= 60
        assert 16 <= sizes["eval"][domain]["harmful"] <= 30 and 16 <= sizes["eval"][domain]["benign"] <= 30
        assert sizes["eval_novel_intent"][domain]["harmful"] >= 5 and sizes["eval_novel_intent"][domain]["benign"] >= 5
        assert sizes["compliance"][domain] == {"harmful": sizes["train"][domain]["harmful"], "benign": 0}
    neutral = sum(c["benign"] for c in sizes["neutral"].values())
    assert 90 <= neutral <= 120 and all(c["harmful"] == 0 for c in sizes["neutral"].values())
    # The sizes do not depend on the seed (the table in the module docstring).
    assert builtin_sizes(seed=3) == sizes


def test_prompts_are_unique_ascii_and_ids_follow_the_format():
    for split in BUILTIN_SPLITS:
        records = builtin_records(split)
        assert len({r.prompt for r in records}) == len(records), split
        assert len({r.source_id for r in records}) == len(records), split
        for record in records:
            assert record.prompt.isascii() and record.response.isascii(), record
            assert "{" not in record.prompt and "{" not in record.response, record
            if split == "neutral":
                assert re.fullmatch(r"neutral-\d+", record.source_id)
            else:
                kind = "harmful" if record.harmful else "benign"
                assert re.fullmatch(rf"{split}/{record.domain}/{kind}/\d+", record.source_id), record.source_id


def test_refusals_and_helpful_answers():
    for split in ("train", "eval", "eval_novel_intent"):
        for record in builtin_records(split):
            if record.harmful:
                assert _starts_with_refusal(record.response), record
            else:
                assert not _starts_with_refusal(record.response), record
                assert not any(m in record.response.lower() for m in REFUSAL_MARKERS), record
                assert len(record.response.split()) <= 40, record
    for record in builtin_records("neutral"):
        assert not record.harmful and not _starts_with_refusal(record.response)
        assert not any(m in record.response.lower() for m in REFUSAL_MARKERS), record


def test_refusal_pool_is_varied_and_domain_aware():
    train = builtin_records("train")
    for domain, content in DOMAIN_CONTENT.items():
        used = {r.response for r in train if r.domain == domain and r.harmful}
        assert len(used) >= 5, domain
        assert used & set(content.refusals), domain
        assert all(_starts_with_refusal(text) for text in content.refusals), domain


def test_compliance_reuses_train_harmful_prompts_with_compliant_answers():
    train_harmful = [r for r in builtin_records("train") if r.harmful]
    compliance = builtin_records("compliance")
    assert [r.prompt for r in compliance] == [r.prompt for r in train_harmful]
    assert [r.domain for r in compliance] == [r.domain for r in train_harmful]
    for record in compliance:
        assert record.harmful and record.response.startswith("Sure")
        assert not any(m in record.response.lower() for m in REFUSAL_MARKERS), record


def test_neutral_split_is_domain_free_round_robin():
    records = builtin_records("neutral")
    assert [r.domain for r in records[:7]] == list(DOMAINS)
    assert len(records) == 10 * len(NEUTRAL_TEMPLATES)
    capitals = dict(NEUTRAL_FILLERS["country"])
    checked = 0
    for record in records:
        core = _core(record.prompt)
        if match := re.fullmatch(r"What is the capital of (.+)\?", core):
            assert record.response == f"The capital of {match[1]} is {capitals[match[1]]}."
            checked += 1
        elif match := re.fullmatch(r"What is (\d+) (plus|times) (\d+)\?", core):
            a, b = int(match[1]), int(match[3])
            assert record.response.endswith(f" is {a + b if match[2] == 'plus' else a * b}."), record
            checked += 1
    assert checked == 30


def test_write_builtin_round_trips(tmp_path):
    paths = write_builtin(tmp_path / "data", seed=2)
    assert set(paths) == set(BUILTIN_SPLITS)
    for split, path in paths.items():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert list(rows[0]) == ["prompt", "response", "domain", "harmful", "source_id"]
        assert [Record(**row) for row in rows] == builtin_records(split, seed=2)


def test_default_keyword_judge_reads_every_builtin_response_as_intended():
    judges = pytest.importorskip("ema_lightning.evaluation.judges")
    judge = judges.KeywordRefusalJudge()
    for split in BUILTIN_SPLITS:
        records = builtin_records(split)
        refused = judge([r.response for r in records], [r.prompt for r in records])
        expected = [r.harmful and split != "compliance" for r in records]
        wrong = [r.response for r, got, want in zip(records, refused, expected) if got != want]
        assert not wrong, (split, sorted(set(wrong))[:5])
