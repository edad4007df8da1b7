"""NPO training step: cached reference log-probs from the adapter-free policy vs a second frozen model.

``ours``: LoRA policy; the reference log-probs of every forget batch are computed once, before
training, by the same network with its adapters disabled (``with model.disable_adapter():``), and
cached. A step is one forward + backward.
``naive``: LoRA policy plus a frozen copy of the base model as reference, whose log-probs are
recomputed at every step with a second (no-grad) forward, as in most unlearning code.

Each variant runs in its own subprocess, so time per step and peak memory (``ru_maxrss``) never
mix. Same model, seed, LoRA settings and batches. Speedups are given from the median and from the
fastest step (the latter is robust to other load on the machine). Both start from policy == reference, so their
first-step losses must both equal (2 / beta) * log 2.

    python -m benchmarks.npo_step            # ~200M-parameter Qwen2-shaped model
    python -m benchmarks.npo_step --quick    # ~10M parameters, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import torch

from benchmarks.common import current_rss_bytes, emit, environment, peak_rss_bytes, qwen2_config, random_batch, time_steps
from ema_lightning.backbone import Backbone, LoraSettings, count_parameters, load_model
from ema_lightning.objectives import npo_loss, sequence_log_probs

MODELS = {
    # ~200M parameters, weights (fp32) dominate memory at batch 2 x 64.
    "default": {"num_layers": 12, "hidden_size": 1024, "vocab_size": 32000, "intermediate_size": 2816},
    "quick": {"num_layers": 4, "hidden_size": 256, "vocab_size": 8192, "intermediate_size": 1024},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~10M-parameter model instead of ~200M")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence (prompt + response)")
    parser.add_argument("--prompt-length", type=int, default=16, help="masked prompt tokens per sequence")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (each on its own batch)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["ours", "naive"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _backbone(args, lora: bool) -> Backbone:
    shape = MODELS["quick" if args.quick else "default"]
    return Backbone(
        tiny=qwen2_config(**shape),
        lora=LoraSettings(r=args.lora_r, dropout=0.0) if lora else None,  # dropout 0: disabled adapters = reference
    )


def run_worker(args) -> dict:
    """One variant, in this process: build, (cache), time the steps, report memory."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    baseline_rss = current_rss_bytes()
    vocab = MODELS["quick" if args.quick else "default"]["vocab_size"]
    batches = [
        random_batch(args.batch, args.length, vocab, args.prompt_length, seed=args.seed + i)
        for i in range(args.warmup + args.steps)
    ]

    torch.manual_seed(args.seed)
    policy = load_model(_backbone(args, lora=True))
    reference = None
    if args.worker == "naive":
        torch.manual_seed(args.seed)  # same base weights as the policy's
        reference = load_model(_backbone(args, lora=False)).eval().requires_grad_(False)
    policy.train()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    trainable, total = count_parameters(policy)
    model_rss = current_rss_bytes()

    # Untimed cold start (lazy kernel initialisation, first allocations), the same for both variants.
    input_ids, labels = batches[0]
    if reference is not None:
        with torch.no_grad():
            reference(input_ids=input_ids)
    sequence_log_probs(policy(input_ids=input_ids).logits, labels).sum().backward()
    optimizer.zero_grad(set_to_none=True)

    cache_s = None
    cached: list[torch.Tensor] = []
    if args.worker == "ours":
        start = time.perf_counter()
        with torch.no_grad(), policy.disable_adapter():
            for input_ids, labels in batches:
                cached.append(sequence_log_probs(policy(input_ids=input_ids).logits, labels))
        cache_s = time.perf_counter() - start

    position = iter(range(len(batches)))
    losses: list[float] = []

    def step():
        i = next(position)
        input_ids, labels = batches[i]
        if reference is None:
            reference_logps = cached[i]
        else:
            with torch.no_grad():
                reference_logps = sequence_log_probs(reference(input_ids=input_ids).logits, labels)
        policy_logps = sequence_log_probs(policy(input_ids=input_ids).logits, labels)
        loss = npo_loss(policy_logps, reference_logps, beta=args.beta)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

    timing = time_steps(step, args.steps, args.warmup)
    return {
        "variant": args.worker,
        "trainable_parameters": trainable,
        "policy_parameters": total,
        "reference_parameters": 0 if reference is None else count_parameters(reference)[1],
        "step_s": timing["median_s"],
        "min_step_s": timing["min_s"],
        "reference_cache_s": cache_s,
        "first_loss": losses[0],
        "peak_rss_bytes": peak_rss_bytes(),
        "baseline_rss_bytes": baseline_rss,
        "rss_after_models_bytes": model_rss,
    }


def _run_subprocess(argv, variant: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.npo_step", *argv, "--worker", variant]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{variant} worker failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout[completed.stdout.index("{") :])


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is not None:
        result = run_worker(args)
        print(json.dumps(result))
        return result
    ours = _run_subprocess(argv, "ours")
    naive = _run_subprocess(argv, "naive")
    expected_first_loss = 2 / args.beta * math.log(2)
    steps_per_epoch = args.warmup + args.steps
    # The cache costs one no-grad forward per forget example, once; per step over one epoch:
    ours_amortised = ours["step_s"] + ours["reference_cache_s"] / steps_per_epoch
    result = {
        "benchmark": "npo_step",
        "model": {"shape": "quick" if args.quick else "default", **MODELS["quick" if args.quick else "default"]},
        "batch": {"sequences": args.batch, "tokens_per_sequence": args.length, "prompt_tokens": args.prompt_length},
        "lora_r": args.lora_r,
        "ours": ours,
        "naive": naive,
        "speedup_per_step": naive["step_s"] / ours["step_s"],
        "speedup_per_step_min": naive["min_step_s"] / ours["min_step_s"],
        "speedup_incl_cache_one_epoch": naive["step_s"] / ours_amortised,
        "peak_memory_ratio": ours["peak_rss_bytes"] / naive["peak_rss_bytes"],
        "peak_memory_ratio_above_baseline": (ours["peak_rss_bytes"] - ours["baseline_rss_bytes"])
        / (naive["peak_rss_bytes"] - naive["baseline_rss_bytes"]),
        "first_losses_equal_2_over_beta_log_2": all(
            math.isclose(v["first_loss"], expected_first_loss, rel_tol=1e-4) for v in (ours, naive)
        ),
        "targets": {"speedup_per_step": ">= 1.25", "peak_memory_ratio": "<= 0.7"},
        "environment": environment(),
    }
    result["meets_targets"] = result["speedup_per_step"] >= 1.25 and result["peak_memory_ratio"] <= 0.7
    emit(result)
    return result


if __name__ == "__main__":
    main()
