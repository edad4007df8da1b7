"""Accuracy of the model-free refusal judges and the two string baselines on labelled responses.

Prints one JSON object: per labelled set and per judge, accuracy, precision, recall, F1 (refused =
positive class) and the confusion matrix (TN, FP, FN, TP). The project's own set
(`ema_lightning/assets/judge_labels.jsonl`, or `--labels PATH`) is always scored, with accuracy per
kind and per domain; `--labelled FILE ...` adds more sets (JSONL rows with prompt, response and
refused; rows whose `refused` is null are skipped).

`LearnedRefusalJudge` (the shipped weights) is fit on the project's set and three of the
human-labelled sets (RBR gold, GPTFuzz, JAILJUDGE mini): its figures on those are IN-SAMPLE and are
marked so (`in_sample: true`, and `in_sample_sets` in the summary); they say nothing about how it
generalises. `--cross-set` adds `LearnedRefusalJudge(held-out)`: for each known human-labelled set
given with `--labelled`, the weights are refit (same recipe as the shipped asset, its `fit_options`)
on the other known sets + the project's set and scored on the held-out one (leave-one-set-out), and
the project's set is scored by 5-fold cross-validation. Those are the figures to report.

    python -m benchmarks.judge_accuracy [--labels PATH] [--labelled FILE ...] [--cross-set] [--show-errors]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from ema_lightning.evaluation.judges import KeywordRefusalJudge, PrefixRefusalJudge, SubstringRefusalJudge
from ema_lightning.evaluation.labelled import PROJECT_SET as LABELLED_PROJECT_SET
from ema_lightning.evaluation.labelled import binary_scores, load_labelled
from ema_lightning.evaluation.learned_judge import LearnedRefusalJudge, load_classifier

PROJECT_SET = "ema_lightning/assets/judge_labels.jsonl"
LEARNED = "LearnedRefusalJudge"
HELD_OUT = "LearnedRefusalJudge(held-out)"


def judges() -> dict:
    """Every judge that needs no model, and the two string baselines, by report name."""
    return {
        "KeywordRefusalJudge": KeywordRefusalJudge(),
        # the refusal-direction list as usually applied to chat responses (case-insensitive) ...
        "SubstringRefusalJudge": SubstringRefusalJudge(ignore_case=True),
        # ... and exactly as in the paper's code (case-sensitive)
        "SubstringRefusalJudge(case-sensitive)": SubstringRefusalJudge(),
        "PrefixRefusalJudge": PrefixRefusalJudge(),
        # the shipped weights: in-sample on the sets it was fit on (see the module docstring)
        LEARNED: LearnedRefusalJudge(),
    }


class _Fixed:
    """A 'judge' that returns precomputed decisions (the leave-one-set-out predictions)."""

    def __init__(self, flags: list[bool]) -> None:
        self.flags = flags

    def __call__(self, responses, prompts=None) -> list[bool]:
        assert len(responses) == len(self.flags)
        return list(self.flags)


def load_labels(path: str | None = None) -> list[dict]:
    """Rows of a labelled JSONL file (default: the project's set) with a true/false `refused`."""
    return load_labelled(path or LABELLED_PROJECT_SET)


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


def score_set(rows: list[dict], show_errors: bool, in_sample: bool = False, held_out: list[bool] | None = None,
              held_out_protocol: str | None = None) -> dict:
    report = {"n": len(rows), "n_refused": sum(r["refused"] for r in rows),
              "judges": {name: evaluate(judge, rows) for name, judge in judges().items()}}
    report["judges"][LEARNED]["in_sample"] = in_sample
    if held_out is not None:
        report["judges"][HELD_OUT] = {**evaluate(_Fixed(held_out), rows), "in_sample": False, "protocol": held_out_protocol}
    if not show_errors:
        for result in report["judges"].values():
            result["errors"] = len(result["errors"])
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default=None, help=f"the project's set (default: {PROJECT_SET})")
    parser.add_argument("--labelled", nargs="*", default=[], metavar="FILE",
                        help="more labelled sets: JSONL with prompt, response, refused (true/false; null rows skipped)")
    parser.add_argument("--cross-set", action="store_true",
                        help="also refit the learned judge leave-one-set-out and report its held-out figures (minutes)")
    parser.add_argument("--show-errors", action="store_true", help="list every misjudged response")
    args = parser.parse_args(argv)
    own_name = args.labels or PROJECT_SET
    sets = {own_name: load_labels(args.labels)}
    for path in args.labelled:
        sets[Path(path).name] = load_labels(path)
    shipped = load_classifier()
    # which given sets the shipped weights were fit on: matched by the file names of the known sets
    from benchmarks.fit_refusal_classifier import SETS, SHIPPABLE

    short = {filename: name for name, (filename, _) in SETS.items()}
    trained = {own_name} if args.labels is None else set()
    trained |= {name for name in sets if short.get(name) in SHIPPABLE}
    held_out: dict[str, list[bool]] = {}
    protocol: dict[str, str] = {}
    if args.cross_set:
        held_out, protocol = cross_set_predictions(sets, own_name, short, shipped["fit_options"])
    report = {"sets": {name: score_set(rows, args.show_errors, in_sample=name in trained, held_out=held_out.get(name),
                                       held_out_protocol=protocol.get(name))
                       for name, rows in sets.items()}}
    report["accuracy"] = {name: {judge: round(result["accuracy"], 3) for judge, result in scored["judges"].items()}
                          for name, scored in report["sets"].items()}
    report["f1"] = {name: {judge: round(result["f1"], 3) for judge, result in scored["judges"].items()}
                    for name, scored in report["sets"].items()}
    report["in_sample_sets"] = {LEARNED: sorted(trained)}
    report["note"] = (f"{LEARNED} uses the shipped weights: its figures on {sorted(trained)} are in-sample (it was fit on them). "
                      + (f"{HELD_OUT} is leave-one-set-out (the project's set: 5-fold); report those." if args.cross_set
                         else "Run with --cross-set for held-out figures."))
    print(json.dumps(report, indent=2))
    return report


def cross_set_predictions(sets: dict[str, list[dict]], own_name: str, short: dict[str, str], options: dict):
    """Leave-one-set-out decisions of the learned judge on each known set, 5-fold on the project's set."""
    from benchmarks.fit_refusal_classifier import OWN, cross_set, featurize, own_cross_validation

    options = {k: v for k, v in options.items() if k in ("l2", "rule_l2", "min_df", "min_sources", "own_weight", "set_weights", "prune")}
    config = load_classifier()["features"]
    known = {OWN: sets[own_name], **{short[name]: rows for name, rows in sets.items() if name in short}}
    feats = {name: featurize(rows, config) for name, rows in known.items()}
    by_name = {v: k for k, v in short.items()}
    out: dict[str, list[bool]] = {}
    protocol: dict[str, str] = {}
    for name, result in cross_set(known, feats, config=config, **options).items():
        out[by_name[name]] = result["pred"]
        protocol[by_name[name]] = f"fit on {result['trained_on']}, scored on {name}"
    # the project's set: 5-fold, its other folds + the known sets other than Do-Not-Answer train
    pred = own_cross_validation(known, feats, config=config, **options)
    out[own_name] = pred
    protocol[own_name] = f"5-fold cross-validation (other folds + {sorted(n for n in known if n not in (OWN, 'do_not_answer'))} train)"
    return out, protocol


if __name__ == "__main__":
    main()
