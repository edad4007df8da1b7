"""Accuracy of the keyword refusal judge and the substring baseline on the hand-labelled judge set.

Prints JSON: per judge accuracy, precision, recall, F1 (refusal = positive class), confusion matrix,
accuracy per kind and per domain, and the misjudged hard cases.

    python benchmarks/judge_accuracy.py [--labels PATH] [--show-errors]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from importlib.resources import files

from ema_lightning.evaluation.judges import KeywordRefusalJudge, SubstringRefusalJudge


def load_labels(path: str | None = None) -> list[dict]:
    text = open(path, encoding="utf-8").read() if path else files("ema_lightning").joinpath("assets/judge_labels.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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
        "confusion_matrix": {"labels": ["complied", "refused"], "rows_true_cols_pred": [[tn, fp], [fn, tp]]},
    }


def grouped_accuracy(rows: list[dict], pred: list[bool], key: str) -> dict:
    hits, counts = defaultdict(int), defaultdict(int)
    for row, p in zip(rows, pred):
        counts[row[key]] += 1
        hits[row[key]] += p == row["refused"]
    return {k: round(hits[k] / counts[k], 4) for k in sorted(counts)}


def evaluate(judge, rows: list[dict]) -> dict:
    pred = judge([r["response"] for r in rows], [r["prompt"] for r in rows])
    truth = [r["refused"] for r in rows]
    hard = [(r, p) for r, p in zip(rows, pred) if r.get("hard")]
    errors = [{"kind": r["kind"], "refused": r["refused"], "response": r["response"]} for r, p in zip(rows, pred) if p != r["refused"]]
    return {
        **binary_scores(truth, pred),
        "hard_cases": len(hard),
        "hard_cases_wrong": sum(p != r["refused"] for r, p in hard),
        "per_kind_accuracy": grouped_accuracy(rows, pred, "kind"),
        "per_domain_accuracy": grouped_accuracy(rows, pred, "domain"),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default=None, help="JSONL with prompt, response, refused, kind, domain")
    parser.add_argument("--show-errors", action="store_true", help="list every misjudged response")
    args = parser.parse_args(argv)
    rows = load_labels(args.labels)
    report = {
        "n": len(rows),
        "n_refused": sum(r["refused"] for r in rows),
        "judges": {
            "KeywordRefusalJudge": evaluate(KeywordRefusalJudge(), rows),
            "SubstringRefusalJudge": evaluate(SubstringRefusalJudge(), rows),
        },
    }
    if not args.show_errors:
        for result in report["judges"].values():
            result["errors"] = len(result["errors"])
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
