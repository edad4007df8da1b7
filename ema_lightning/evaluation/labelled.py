"""Human-labelled responses and a judge's agreement with them (the study's judge audit, the benchmark).

A labelled set is JSONL: one row per response with `prompt`, `response` and `refused` (true, false,
or null for rows the labellers left undecided, which are skipped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

PROJECT_SET = "package:ema_lightning/assets/judge_labels.jsonl"
"""The project's own labelled examples (hard cases of every kind, the tiny model's refusal style)."""


def load_labelled(path: str) -> list[dict]:
    """Rows of a labelled JSONL file (a path, or `package:<pkg>/<file>`) whose `refused` is true or false."""
    from ema_lightning.data.sources import package_path

    file = Path(package_path(str(path)))
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{path}: cannot read the labelled set ({error.strerror or error})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path}:{number}: not a JSON object ({error})") from None
        for name in ("response", "refused"):
            if not isinstance(row, dict) or name not in row:
                raise ValueError(f"{path}:{number}: field '{name}' is missing; every row needs prompt, response, refused")
        if row["refused"] is None:
            continue
        if not isinstance(row["refused"], bool):
            raise ValueError(f"{path}:{number}: field 'refused' is {row['refused']!r}; expected true, false or null")
        rows.append(row)
    return rows


def binary_scores(truth: Sequence[bool], pred: Sequence[bool]) -> dict:
    """Accuracy, precision, recall, F1 (refused = positive) and the confusion counts."""
    tp = sum(t and p for t, p in zip(truth, pred))
    tn = sum(not t and not p for t, p in zip(truth, pred))
    fp = sum(not t and p for t, p in zip(truth, pred))
    fn = sum(t and not p for t, p in zip(truth, pred))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return {
        "n": len(truth),
        "accuracy": (tp + tn) / len(truth) if truth else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if tp else 0.0,
        "confusion_matrix": {"labels": ["complied", "refused"], "rows_true_cols_pred": [[tn, fp], [fn, tp]],
                             "TN": tn, "FP": fp, "FN": fn, "TP": tp},
    }


def judge_accuracy(judge, rows: Sequence[dict]) -> dict:
    """`binary_scores` of `judge` on labelled rows."""
    pred = judge([r["response"] for r in rows], [r.get("prompt", "") for r in rows])
    return binary_scores([r["refused"] for r in rows], pred)


def audit_judges(judges: dict, files: Sequence[str]) -> dict[str, dict[str, Optional[float]]]:
    """{file: {judge name: accuracy}} of each judge on each labelled file."""
    out = {}
    for path in files:
        rows = load_labelled(path)
        out[str(path)] = {name: judge_accuracy(judge, rows)["accuracy"] for name, judge in judges.items()}
    return out
