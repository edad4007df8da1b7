"""Accuracy of the model-free refusal judges and the two string baselines on labelled responses.

Prints one JSON object: per labelled set and per judge, accuracy, precision, recall, F1 (refused =
positive class) and the confusion matrix (TN, FP, FN, TP). The project's own set
(`ema_lightning/assets/judge_labels.jsonl`, or `--labels PATH`) is always scored, with accuracy per
kind and per domain; `--labelled FILE ...` adds more sets (JSONL rows with prompt, response and
refused; rows whose `refused` is null are skipped).

    python -m benchmarks.judge_accuracy [--labels PATH] [--labelled FILE ...] [--show-errors]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from importlib.resources import files
from pathlib import Path

from ema_lightning.evaluation.judges import KeywordRefusalJudge, PrefixRefusalJudge, SubstringRefusalJudge

PROJECT_SET = "ema_lightning/assets/judge_labels.jsonl"


def judges() -> dict:
    """Every judge that needs no model, and the two string baselines, by report name."""
    return {
        "KeywordRefusalJudge": KeywordRefusalJudge(),
        # the refusal-direction list as usually applied to chat responses (case-insensitive) ...
        "SubstringRefusalJudge": SubstringRefusalJudge(ignore_case=True),
        # ... and exactly as in the paper's code (case-sensitive)
        "SubstringRefusalJudge(case-sensitive)": SubstringRefusalJudge(),
        "PrefixRefusalJudge": PrefixRefusalJudge(),
    }


def load_labels(path: str | None = None) -> list[dict]:
    """Rows of a labelled JSONL file (default: the project's set) with a true/false `refused`."""
    text = open(path, encoding="utf-8").read() if path else files("ema_lightning").joinpath("assets/judge_labels.jsonl").read_text("utf-8")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for field in ("response", "refused"):
            if field not in row:
                raise ValueError(f"{path or PROJECT_SET}:{number}: field '{field}' is missing; every row needs prompt, response, refused")
        if row["refused"] is None:
            continue
        if not isinstance(row["refused"], bool):
            raise ValueError(f"{path or PROJECT_SET}:{number}: field 'refused' is {row['refused']!r}; expected true, false or null")
        rows.append(row)
    return rows


def binary_scores(truth: list[bool], pred: list[bool]) -> dict:
    tp = sum(t and p for t, p in zip(truth, pred))
    tn = sum(not t and not p for t, p in zip(truth, pred))
    fp = sum(not t and p for t, p in zip(truth, pred))
    fn = sum(t and not p for t, p in zip(truth, pred))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {
        "accuracy": (tp + tn) / len(truth),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion_matrix": {"labels": ["complied", "refused"], "rows_true_cols_pred": [[tn, fp], [fn, tp]],
                             "TN": tn, "FP": fp, "FN": fn, "TP": tp},
    }


def grouped_accuracy(rows: list[dict], pred: list[bool], key: str) -> dict:
    hits, counts = defaultdict(int), defaultdict(int)
    for row, p in zip(rows, pred):
        counts[row[key]] += 1
        hits[row[key]] += p == row["refused"]
    return {k: round(hits[k] / counts[k], 4) for k in sorted(counts)}


def evaluate(judge, rows: list[dict]) -> dict:
    pred = judge([r["response"] for r in rows], [r.get("prompt", "") for r in rows])
    truth = [r["refused"] for r in rows]
    result = binary_scores(truth, pred)
    if rows and "kind" in rows[0]:  # the project's set: hard cases, per kind and per domain
        hard = [(r, p) for r, p in zip(rows, pred) if r.get("hard")]
        result["hard_cases"] = len(hard)
        result["hard_cases_wrong"] = sum(p != r["refused"] for r, p in hard)
        result["per_kind_accuracy"] = grouped_accuracy(rows, pred, "kind")
        result["per_domain_accuracy"] = grouped_accuracy(rows, pred, "domain")
    result["errors"] = [{key: r[key] for key in ("id", "kind", "refused", "prompt", "response") if key in r}
                        for r, p in zip(rows, pred) if p != r["refused"]]
    return result


def score_set(rows: list[dict], show_errors: bool) -> dict:
    report = {"n": len(rows), "n_refused": sum(r["refused"] for r in rows),
              "judges": {name: evaluate(judge, rows) for name, judge in judges().items()}}
    if not show_errors:
        for result in report["judges"].values():
            result["errors"] = len(result["errors"])
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default=None, help=f"the project's set (default: {PROJECT_SET})")
    parser.add_argument("--labelled", nargs="*", default=[], metavar="FILE",
                        help="more labelled sets: JSONL with prompt, response, refused (true/false; null rows skipped)")
    parser.add_argument("--show-errors", action="store_true", help="list every misjudged response")
    args = parser.parse_args(argv)
    sets = {args.labels or PROJECT_SET: load_labels(args.labels)}
    for path in args.labelled:
        sets[Path(path).name] = load_labels(path)
    report = {"sets": {name: score_set(rows, args.show_errors) for name, rows in sets.items()}}
    report["accuracy"] = {name: {judge: round(result["accuracy"], 3) for judge, result in scored["judges"].items()}
                          for name, scored in report["sets"].items()}
    report["f1"] = {name: {judge: round(result["f1"], 3) for judge, result in scored["judges"].items()}
                    for name, scored in report["sets"].items()}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
