"""Evaluation throughput on CPU: batched vs one-at-a-time generation; logit judge vs generation + keyword judge.

A tiny Qwen2-shaped random model (4 layers x 128 wide) with the package's local byte-level BPE
tokenizer and the built-in eval prompts. Random weights rarely emit eos, so both generation arms are
forced to full length (min_new_tokens = max_new_tokens): the comparison measures the same work.
Prints JSON, one entry per response length.

The logit judge's cost is one prefill whatever the response length, while generation adds a decode
step per token: its advantage grows with `max_new_tokens` (about 5x at 32 tokens, past 20x from about
150 tokens on this CPU; refusal benchmarks generate 256-512 tokens per response).

    python benchmarks/eval_throughput.py [--prompts 64] [--batch-size 16] [--max-new-tokens 32 64 128 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from ema_lightning.data.builtin import builtin_records
from ema_lightning.data.collate import bucket_by_length, format_prompt
from ema_lightning.data.tokenizer import builtin_tokenizer
from ema_lightning.evaluation.generation import generate
from ema_lightning.evaluation.judges import KeywordRefusalJudge, LogitRefusalJudge


def tiny_qwen2(vocab_size: int, layers: int = 4, width: int = 128) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return Qwen2ForCausalLM(config).eval()


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Best wall time of `repeats` runs (the machine may be shared) and the last result."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 1 avoids OpenMP oversubscription on a shared 2-core machine")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs per arm")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as directory:
        tokenizer = builtin_tokenizer(directory)
    tokenizer.padding_side = "left"
    model = tiny_qwen2(len(tokenizer))
    texts = [format_prompt(tokenizer, r.prompt) for r in builtin_records("eval")[: args.prompts]]
    lengths = [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    batches = [[texts[i] for i in b] for b in bucket_by_length(lengths, args.batch_size)]
    keyword, logit = KeywordRefusalJudge(), LogitRefusalJudge().prepare(tokenizer)

    def run_generation(groups, length):
        out = []
        for group in groups:
            enc = tokenizer(group, padding=True, return_tensors="pt", add_special_tokens=False)
            out += generate(model, tokenizer, enc["input_ids"], enc["attention_mask"], max_new_tokens=length, min_new_tokens=length)
        return out

    def run_logit(groups):
        flags = []
        for group in groups:
            enc = tokenizer(group, padding=True, return_tensors="pt", add_special_tokens=False)
            flags += logit.judge(model, enc["input_ids"], enc["attention_mask"]).tolist()
        return flags

    run_generation(batches[:1], 4), run_logit(batches[:1])  # warm-up
    n = len(texts)
    t_logit, _ = timed(lambda: run_logit(batches), args.repeats)
    lengths_report = []
    for length in args.max_new_tokens:
        t_batched, responses = timed(lambda: run_generation(batches, length), args.repeats)
        t_single, _ = timed(lambda: run_generation([[t] for t in texts], length), args.repeats)
        t_judge, _ = timed(lambda: keyword(responses), args.repeats)
        lengths_report.append({
            "max_new_tokens": length,
            "batched_prompts_per_s": round(n / t_batched, 2),
            "one_at_a_time_prompts_per_s": round(n / t_single, 2),
            "batched_speedup": round(t_single / t_batched, 2),
            "generation_plus_keyword_prompts_per_s": round(n / (t_batched + t_judge), 2),
            "keyword_judge_only_prompts_per_s": round(n / t_judge, 2),
            "logit_judge_speedup": round((t_batched + t_judge) / t_logit, 2),
        })
    report = {
        "model": "random Qwen2, 4 layers x 128 wide, local byte-level BPE tokenizer (vocab %d)" % len(tokenizer),
        "device": "cpu", "threads": torch.get_num_threads(), "prompts": n, "batch_size": args.batch_size,
        "timing": f"best of {args.repeats} runs per arm, tokenization included in every arm",
        "forced_full_length": "min_new_tokens = max_new_tokens in both generation arms (random weights rarely emit eos)",
        "logit_judge_prompts_per_s": round(n / t_logit, 2),
        "by_max_new_tokens": lengths_report,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
