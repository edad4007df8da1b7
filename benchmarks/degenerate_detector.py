"""How often `DegenerateDetector` flags real chat responses (false positives) and catches broken ones (recall).

Real responses: the response column of any labelled JSONL given with `--labelled` (human-labelled
responses of real chat models; all fluent text by construction, so every flag on a non-empty one is a
false positive) and the project's own judge set. Broken responses: each real response degraded the
ways NPO breaks a model (one word repeated, a phrase looping, the answer collapsing into a repeated
word after a fluent start, nothing but punctuation). Prints one JSON object.

    python -m benchmarks.degenerate_detector [--labelled FILE ...]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from importlib.resources import files

from ema_lightning.evaluation.coherence import DegenerateDetector


def responses(path: str | None) -> list[str]:
    text = open(path, encoding="utf-8").read() if path else files("ema_lightning").joinpath("assets/judge_labels.jsonl").read_text("utf-8")
    return [str(json.loads(line).get("response") or "") for line in text.splitlines() if line.strip()]


def degraded(response: str, rng: random.Random) -> list[str]:
    """Broken versions of a fluent response, as unlearning leaves them."""
    words = re.findall(r"\S+", response) or ["that"]
    word = rng.choice(words)
    start = " ".join(words[: rng.randint(1, min(8, len(words)))])
    phrase = " ".join(words[: rng.randint(2, min(4, len(words)) if len(words) >= 2 else 2)])
    return [
        " ".join([word] * 12),                                   # stuck on one word
        " ".join([phrase] * 8),                                  # a short phrase looping
        start + " " + " ".join([word] * 10),                     # a fluent start, then stuck
        "... ... !!! ...",                                       # no words at all
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", nargs="*", default=[], help="labelled JSONL files (their response column)")
    args = parser.parse_args(argv)
    detector, rng = DegenerateDetector(), random.Random(0)
    out: dict = {"sets": {}}
    broken_total = broken_caught = 0
    for path in [None, *args.labelled]:
        texts = responses(path)
        reasons = [detector.reason(t) for t in texts]
        empty = sum(r == "empty" for r in reasons)
        nonempty = len(texts) - empty
        flagged = sum(r is not None and r != "empty" for r in reasons)
        out["sets"][path or "project judge set"] = {
            "responses": len(texts), "empty": empty,
            "false_positive_rate": round(flagged / nonempty, 4) if nonempty else None,
            "flagged": {k: sum(r == k for r in reasons) for k in ("stuck", "loop")},
        }
        for text in texts:
            variants = degraded(text, rng)
            broken_total += len(variants)
            broken_caught += sum(detector(variants))
    real = sum(s["responses"] - s["empty"] for s in out["sets"].values())
    wrong = sum(sum(s["flagged"].values()) for s in out["sets"].values())
    out["pooled_false_positive_rate"] = round(wrong / real, 4) if real else None
    out["recall_on_degraded"] = round(broken_caught / broken_total, 4) if broken_total else None
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
