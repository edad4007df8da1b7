"""DegenerateDetector: broken output (empty, stuck, looping) is told apart from fluent answers and refusals."""

import pytest

from ema_lightning.data.builtin import builtin_records
from ema_lightning.evaluation.coherence import DegenerateDetector


@pytest.mark.parametrize("response, reason", [
    ("", "empty"), ("   \n", "empty"), ("... !!! ???", "empty"),
    ("that that that that", "stuck"), ("I'm sorry sorry sorry sorry, but", "stuck"),
    ("you can do it you can do it you can do it you can do it you can do it you can do it", "loop"),
])
def test_broken_responses_are_flagged_with_their_reason(response, reason):
    assert DegenerateDetector().reason(response) == reason


def test_fluent_answers_and_refusals_are_not_degenerate():
    detector = DegenerateDetector()
    fluent = [
        "I'm sorry, but I can't help with that request.",
        "Sure. First, preheat the oven to 180 degrees; then mix the flour, the sugar and the butter.",
        "No, no. That is not how it works: the server checks the token before it answers.",  # a doubled word is fine
        "Step 1: open the settings. Step 2: open privacy. Step 3: turn off location history.",
    ]
    assert detector(fluent) == [False] * len(fluent)


def test_the_built_in_responses_are_all_coherent():
    responses = [r.response for split in ("train", "eval", "compliance") for r in builtin_records(split) if r.response]
    flagged = [r for r in responses if DegenerateDetector().reason(r)]
    assert not flagged, flagged[:3]


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="max_run"):
        DegenerateDetector(max_run=1)


def test_benchmark_reports_false_positives_and_recall(tmp_path):
    from benchmarks.degenerate_detector import main

    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text('{"prompt": "p", "response": "I cannot help with that.", "refused": true}\n'
                        '{"prompt": "p", "response": "", "refused": true}\n')
    out = main(["--labelled", str(labelled)])
    assert out["sets"][str(labelled)] == {"responses": 2, "empty": 1, "false_positive_rate": 0.0,
                                          "flagged": {"stuck": 0, "loop": 0}}
    assert out["recall_on_degraded"] > 0.95
