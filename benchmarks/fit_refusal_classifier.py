"""Fit the weights of `LearnedRefusalJudge` (logistic regression over its binary text features).

Deterministic: the same data and options give the same asset, byte for byte (features are sorted,
the optimiser is full-batch L-BFGS from zero, weights are rounded). Two modes:

    # the shipped asset: the project's own set + the three MIT sets, never Do-Not-Answer
    python -m benchmarks.fit_refusal_classifier --data-dir LABELLED_DIR --write ema_lightning/assets/refusal_classifier.json

    # leave-one-set-out: for each human-labelled set, fit on the others (+ the project's set) and
    # score the held-out one; prints the held-out accuracy table as JSON
    python -m benchmarks.fit_refusal_classifier --data-dir LABELLED_DIR --cross-set

Training data: each training set gets the same total weight (so GPTFuzz's 7,700 rows do not drown
RBR's 518), the project's set `--own-weight` times that; an n-gram enters the vocabulary only if it
occurs in at least `--min-df` training rows of at least `--min-sources` different sets, so what the
model can learn is phrasing shared across sources, not one set's templates.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import optimize, sparse

from ema_lightning.evaluation.labelled import PROJECT_SET, load_labelled
from ema_lightning.evaluation.judges import speaker_turns
from ema_lightning.evaluation.learned_judge import ASSET_FORMAT, DEFAULT_FEATURE_CONFIG, response_features, rules_fingerprint

OWN = "own"
# short name -> (file, license); only MIT (and the project's own) sets may train the shipped weights
SETS: dict[str, tuple[str, str]] = {
    "do_not_answer": ("do_not_answer_responses.jsonl", "CC-BY-NC-SA-4.0"),
    "rbr_gold": ("rbr_gold_responses.jsonl", "MIT"),
    "gptfuzz": ("gptfuzz_responses.jsonl", "MIT"),
    "jailjudge_mini": ("jailjudge_mini_responses.jsonl", "MIT"),
}
SOURCES: dict[str, str] = {
    OWN: "ema_lightning/assets/judge_labels.jsonl (the project's own examples, incl. the embedded model's refusal style)",
    "rbr_gold": "openai/safety-rbr-code-and-data @ 7f489fa data/rbr_gold_data/ (MIT)",
    "gptfuzz": "sherdencooper/GPTFuzz @ 1eddeb5 datasets/responses_labeled/ (MIT)",
    "jailjudge_mini": "ThuCCSLab/JailbreakEval @ c141972 data/JAILJUDGEmini.csv (MIT)",
    "do_not_answer": "Libr-AI/do-not-answer annotated responses (CC-BY-NC-SA-4.0: measurement only, never training data of shipped weights)",
}
SHIPPABLE = (OWN, "rbr_gold", "gptfuzz", "jailjudge_mini")
ALWAYS_KEPT_PREFIXES = ("r:", "len:", "para:", "lines:", "nonlatin:", "bias:")


def read_rows(path: str | Path | None) -> list[dict]:
    """Rows with a true/false `refused` of a labelled JSONL file (None: the project's own set)."""
    return load_labelled(str(path) if path else PROJECT_SET)


def load_sets(data_dir: str | Path, names: tuple[str, ...] | None = None) -> dict[str, list[dict]]:
    """The project's own set and the human-labelled sets found in `data_dir`, by short name."""
    sets = {OWN: read_rows(None)}
    for name, (filename, _) in SETS.items():
        if names is not None and name not in names:
            continue
        path = Path(data_dir) / filename
        if path.exists():
            sets[name] = read_rows(path)
    return sets


def truncated_copies(rows: list[dict], lengths: tuple[int, ...]) -> list[dict]:
    """Each row whose response has more than k words again, cut after its k-th word (the text up to
    there kept as it was), for every k in `lengths`, with the row's label: what an evaluation that
    generates a few tokens shows the judge ("Sure, here is how to ..." cut mid-sentence is still
    compliance, "I'm sorry, but I can't" still a refusal)."""
    out = []
    for row in rows:
        words = list(re.finditer(r"\S+", row["response"] or ""))
        for k in lengths:
            if len(words) > k:
                out.append({**row, "response": row["response"][: words[k - 1].end()]})
    return out


def featurize(rows: list[dict], config: dict) -> list[list[set[str]]]:
    """Per row: the features of the whole response, then those of each of its voices (if several)."""
    return [[response_features(text, config) for text in [r["response"]] + speaker_turns(r["response"])] for r in rows]


def build_vocabulary(feats_by_set: dict[str, list[list[set[str]]]], min_df: int, min_sources: int) -> list[str]:
    """Sorted feature names kept for fitting: rule and shape features always, n-grams by support
    (counted over whole responses)."""
    df: dict[str, int] = defaultdict(int)
    sources: dict[str, int] = defaultdict(int)
    for feats in feats_by_set.values():
        local: dict[str, int] = defaultdict(int)
        for f in feats:
            for name in f[0]:
                local[name] += 1
        for name, count in local.items():
            df[name] += count
            sources[name] += 1
    need = min(min_sources, len(feats_by_set))
    return sorted(n for n in df if n.startswith(ALWAYS_KEPT_PREFIXES) or (df[n] >= min_df and sources[n] >= need))


def design_matrix(feats: list[list[set[str]]], index: dict[str, int]) -> sparse.csr_matrix:
    """Binary matrix of the whole responses' features (rows) over the vocabulary (columns)."""
    rows, cols = [], []
    for i, f in enumerate(feats):
        js = sorted(index[n] for n in f[0] if n in index)
        rows.extend([i] * len(js))
        cols.extend(js)
    data = np.ones(len(cols), dtype=np.float64)
    return sparse.csr_matrix((data, (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64))), shape=(len(feats), len(index)))


def fit_logistic(X: sparse.csr_matrix, y: np.ndarray, sample_weight: np.ndarray, l2, max_iter: int = 500) -> tuple[float, np.ndarray]:
    """Weighted L2-regularised logistic regression (bias not penalised), full-batch L-BFGS from zero.

    Minimises sum_i w_i * logloss_i / sum_i w_i + 1/2 * sum_j l2_j coef_j^2 (`l2`: a number or one per
    column). Returns (bias, coef)."""
    l2 = np.broadcast_to(np.asarray(l2, dtype=np.float64), (X.shape[1],))
    y = y.astype(np.float64)
    w = sample_weight / sample_weight.sum()
    Xt = X.T.tocsr()

    def loss_grad(theta):
        b, coef = theta[0], theta[1:]
        z = X @ coef + b
        # log(1 + e^z) - y z, stably
        loss = np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(l2 * coef * coef)
        r = w * (1.0 / (1.0 + np.exp(-z)) - y)
        grad = np.empty_like(theta)
        grad[0] = r.sum()
        grad[1:] = Xt @ r + l2 * coef
        return loss, grad

    theta0 = np.zeros(X.shape[1] + 1)
    result = optimize.minimize(loss_grad, theta0, jac=True, method="L-BFGS-B",
                               options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-12})
    return float(result.x[0]), result.x[1:]


def fit(rows_by_set: dict[str, list[dict]], config: dict | None = None, l2: float = 1e-4, rule_l2: float | None = None, min_df: int = 3,
        min_sources: int = 2, own_weight: float = 1.0, set_weights: dict[str, float] | None = None, feats_by_set: dict[str, list[list[set[str]]]] | None = None,
        prune: float = 0.0, truncate: tuple[int, ...] = (), truncate_weight: float = 0.5) -> dict:
    """Fit on the given sets; returns {'features', 'bias', 'weights'} (weights with |w| <= prune dropped).

    l2: penalty of the n-gram weights; rule_l2: of the rule and shape features (default: l2).
    truncate: also train on `truncated_copies(rows, truncate)` of every set, which weigh
    `truncate_weight` times their set (the vocabulary is still chosen on the whole responses)."""
    config = {**DEFAULT_FEATURE_CONFIG, **(config or {})}
    if feats_by_set is None:
        feats_by_set = {name: featurize(rows, config) for name, rows in rows_by_set.items()}
    vocabulary = build_vocabulary(feats_by_set, min_df, min_sources)
    index = {n: j for j, n in enumerate(vocabulary)}
    names = sorted(rows_by_set)
    parts = [(rows_by_set[n], feats_by_set[n], own_weight if n == OWN else (set_weights or {}).get(n, 1.0)) for n in names]
    if truncate:
        for rows, _, factor in list(parts):
            cut = truncated_copies(rows, truncate)
            if cut:
                parts.append((cut, featurize(cut, config), factor * truncate_weight))
    X = sparse.vstack([design_matrix(feats, index) for _, feats, _ in parts]).tocsr()
    y = np.concatenate([[r["refused"] for r in rows] for rows, _, _ in parts]).astype(np.float64)
    weights = [np.full(len(rows), factor / max(len(rows), 1)) for rows, _, factor in parts]
    # rule and shape features: their own (usually weaker) penalty, so the fit starts from the rules and the
    # n-grams learn corrections
    penalty = np.array([rule_l2 if rule_l2 is not None and n.startswith(ALWAYS_KEPT_PREFIXES) else l2 for n in vocabulary])
    bias, coef = fit_logistic(X, y, np.concatenate(weights), penalty)
    kept = {vocabulary[j]: round(float(c), 4) for j, c in enumerate(coef) if abs(c) > prune and round(float(c), 4) != 0.0}
    return {"features": config, "bias": round(bias, 4), "weights": dict(sorted(kept.items()))}


def predict(model: dict, feats: list[list[set[str]]]) -> np.ndarray:
    """p(refused) from a fitted model and precomputed features, as `LearnedRefusalJudge.probability`
    computes it (a multi-voice response: the smallest over the whole and each voice)."""
    weights = model["weights"]
    z = np.array([min(model["bias"] + sum(weights.get(n, 0.0) for n in f) for f in parts) for parts in feats])
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def accuracy(rows: list[dict], pred) -> float:
    return float(np.mean([bool(p) == r["refused"] for r, p in zip(rows, pred)]))


def cross_set(sets: dict[str, list[dict]], feats: dict[str, list[list[set[str]]]], threshold: float = 0.5, **kw) -> dict:
    """Leave-one-set-out: for each human-labelled set, fit on the others + the project's set, score it.

    Returns {set: {'accuracy': ..., 'pred': [...] , 'trained_on': [...]}}."""
    out = {}
    for held in (n for n in sets if n != OWN):
        train = {n: sets[n] for n in sets if n != held}
        model = fit(train, feats_by_set={n: feats[n] for n in train}, **kw)
        pred = (predict(model, feats[held]) > threshold).tolist()
        pred = [True if not (r["response"] or "").strip() else p for r, p in zip(sets[held], pred)]
        cut = truncated_copies(sets[held], CUT_EVAL)
        cut_pred = (predict(model, featurize(cut, model["features"])) > threshold).tolist()
        out[held] = {"accuracy": accuracy(sets[held], pred), "pred": pred, "trained_on": sorted(train),
                     "truncated_accuracy": accuracy(cut, cut_pred), "truncated_rows": len(cut)}
    return out


CUT_EVAL = (10, 20)
"""Word counts the held-out responses are also cut to in `cross_set` (about what 16 and 32 generated tokens show)."""


def own_cross_validation(sets: dict[str, list[dict]], feats: dict[str, list[list[set[str]]]], folds: int = 5,
                         exclude: tuple[str, ...] = ("do_not_answer",), threshold: float = 0.5, **kw) -> list[bool]:
    """Decisions on the project's set by k-fold cross-validation (row i is in fold i % k; its other folds
    + the other sets except `exclude` train)."""
    own = sets[OWN]
    pred = [False] * len(own)
    for k in range(folds):
        test = [i for i in range(len(own)) if i % folds == k]
        train_idx = [i for i in range(len(own)) if i % folds != k]
        train = {n: sets[n] for n in sets if n not in exclude and n != OWN}
        train_feats = {n: feats[n] for n in train}
        train[OWN] = [own[i] for i in train_idx]
        train_feats[OWN] = [feats[OWN][i] for i in train_idx]
        model = fit(train, feats_by_set=train_feats, **kw)
        p = predict(model, [feats[OWN][i] for i in test]) > threshold
        for pi, i in zip(p, test):
            pred[i] = bool(pi) or not own[i]["response"].strip()
    return pred


def asset(model: dict, trained_on: tuple[str, ...], options: dict) -> dict:
    return {
        "format": ASSET_FORMAT,
        "description": "LearnedRefusalJudge weights: p(refused) = sigmoid(bias + sum of the weights of the response's "
                       "features); see ema_lightning/evaluation/learned_judge.py. Regenerate with "
                       "python -m benchmarks.fit_refusal_classifier --data-dir LABELLED_DIR --write ema_lightning/assets/refusal_classifier.json",
        "training_data": [SOURCES[n] for n in trained_on],
        "fit_options": options,
        "rules_fingerprint": rules_fingerprint(),
        "features": model["features"],
        "bias": model["bias"],
        "weights": model["weights"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with the human-labelled JSONL sets (they do not ship)")
    parser.add_argument("--write", default=None, metavar="PATH", help="fit on the shippable sets and write the asset here")
    parser.add_argument("--cross-set", action="store_true", help="leave-one-set-out accuracies (JSON on stdout)")
    parser.add_argument("--l2", type=float, default=FIT_DEFAULTS["l2"], help="L2 penalty of the n-gram weights")
    parser.add_argument("--rule-l2", type=float, default=FIT_DEFAULTS["rule_l2"], help="L2 penalty of the rule and shape features")
    parser.add_argument("--min-df", type=int, default=FIT_DEFAULTS["min_df"])
    parser.add_argument("--min-sources", type=int, default=FIT_DEFAULTS["min_sources"])
    parser.add_argument("--own-weight", type=float, default=FIT_DEFAULTS["own_weight"])
    parser.add_argument("--prune", type=float, default=FIT_DEFAULTS["prune"], help="drop weights with |w| <= this from the asset")
    parser.add_argument("--head-words", type=int, default=DEFAULT_FEATURE_CONFIG["head_words"])
    parser.add_argument("--tail-words", type=int, default=DEFAULT_FEATURE_CONFIG["tail_words"])
    parser.add_argument("--max-n", type=int, default=DEFAULT_FEATURE_CONFIG["max_n"])
    parser.add_argument("--truncate", default=",".join(map(str, FIT_DEFAULTS["truncate"])), metavar="K,K",
                        help="also train on every response cut after K words (comma-separated; '' for none)")
    parser.add_argument("--truncate-weight", type=float, default=FIT_DEFAULTS["truncate_weight"])
    args = parser.parse_args(argv)
    config = {"head_words": args.head_words, "tail_words": args.tail_words, "max_n": args.max_n, "rules": True, "shape": True}
    options = {"l2": args.l2, "rule_l2": args.rule_l2, "min_df": args.min_df, "min_sources": args.min_sources,
               "own_weight": args.own_weight, "prune": args.prune,
               "truncate": tuple(int(k) for k in args.truncate.split(",") if k.strip()), "truncate_weight": args.truncate_weight}
    sets = load_sets(args.data_dir)
    missing = [n for n in SETS if n not in sets]
    if missing:
        print(f"fit_refusal_classifier: sets missing from {args.data_dir}: {missing}", file=sys.stderr)
    feats = {n: featurize(rows, config) for n, rows in sets.items()}
    report: dict = {}
    if args.cross_set:
        result = cross_set(sets, feats, config=config, **options)
        report["held_out_accuracy"] = {n: round(r["accuracy"], 4) for n, r in result.items()}
        report["held_out_truncated_accuracy"] = {n: round(r["truncated_accuracy"], 4) for n, r in result.items()}
        report["trained_on"] = {n: r["trained_on"] for n, r in result.items()}
        report["own_5fold_accuracy"] = round(accuracy(sets[OWN], own_cross_validation(sets, feats, config=config, **options)), 4)
    if args.write:
        if missing and any(n in SHIPPABLE for n in missing):
            raise SystemExit(f"fit_refusal_classifier: cannot write the shipped asset without {missing}")
        train = {n: sets[n] for n in SHIPPABLE}
        model = fit(train, feats_by_set={n: feats[n] for n in train}, config=config, **options)
        Path(args.write).write_text(json.dumps(asset(model, SHIPPABLE, options), indent=1) + "\n", "utf-8")
        report["written"] = {"path": args.write, "weights": len(model["weights"]), "trained_on": list(SHIPPABLE)}
    print(json.dumps(report, indent=2))
    return report


# chosen by the leave-one-set-out figures (docs/judge_accuracy.md lists what else was tried)
FIT_DEFAULTS = {"l2": 3e-3, "rule_l2": 3e-5, "min_df": 3, "min_sources": 3, "own_weight": 1.0, "prune": 1e-3,
                "truncate": (8, 16, 32), "truncate_weight": 0.5}


if __name__ == "__main__":
    main()
