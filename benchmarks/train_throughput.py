"""Training throughput (tokens/s) and model FLOPs utilisation of a small Qwen2-shaped model on this machine.

Full fine-tuning (fp32, AdamW) and LoRA, each eager and optionally under ``torch.compile``.
MFU = model FLOPs per step / step time / fp32 matmul peak measured in the same run; model FLOPs per token
are ``6 * N_trained + 4 * N_frozen + 12 * L * T * d`` (see ``benchmarks.common.training_flops_per_token``).

    python -m benchmarks.train_throughput                 # 6 layers x 256 wide, batch 8 x 128
    python -m benchmarks.train_throughput --compile both --modes full --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import (
    emit,
    environment,
    measured_matmul_peak,
    qwen2_config,
    random_batch,
    time_steps,
    training_flops_per_token,
)
from ema_lightning.backbone import Backbone, LoraSettings, count_parameters, load_model
from ema_lightning.objectives import cross_entropy_loss


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary (the LM head is a matmul too)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (the first ones pay lazy initialisation)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--compile", choices=["off", "on", "both"], default="off",
        help="torch.compile (inductor needs a C++ compiler; ~50 s of compilation per mode on 2 cores)",
    )
    parser.add_argument("--modes", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def train_step_fn(model, optimizer, input_ids, labels):
    """One optimisation step: forward, token-mean cross-entropy, backward, AdamW update."""

    def step():
        logits = model(input_ids=input_ids).logits
        loss = cross_entropy_loss(logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def measure(args, mode: str, compiled: bool, peak_flops: float) -> dict:
    torch.manual_seed(args.seed)
    backbone = Backbone(
        tiny=qwen2_config(args.layers, args.hidden, args.vocab),
        attn_implementation=args.attn,
        lora=LoraSettings(r=args.lora_r, dropout=0.0) if mode == "lora" else None,
    )
    model = load_model(backbone)
    model.train()
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    input_ids, labels = random_batch(args.batch, args.length, args.vocab, prompt_length=0, seed=args.seed)
    flops_per_step = training_flops_per_token(model, args.layers, args.hidden, args.length) * input_ids.numel()
    runner = model
    compile_s = None
    if compiled:
        runner = torch.compile(model)
        start = time.perf_counter()
        train_step_fn(runner, optimizer, input_ids, labels)()  # compilation happens here
        compile_s = time.perf_counter() - start
    timing = time_steps(train_step_fn(runner, optimizer, input_ids, labels), args.steps, args.warmup)
    step_s = timing["median_s"]
    return {
        "mode": mode,
        "compile": compiled,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "model_flops_per_step": flops_per_step,
        "step_s": step_s,
        "min_step_s": timing["min_s"],
        "tokens_per_s": input_ids.numel() / step_s,
        "achieved_flops": flops_per_step / step_s,
        "mfu": flops_per_step / step_s / peak_flops,
        "mfu_best_step": flops_per_step / timing["min_s"] / peak_flops,
        "compile_s": compile_s,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    peak = measured_matmul_peak()
    runs = []
    for mode in args.modes:
        for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
            try:
                runs.append(measure(args, mode, compiled, peak))
            except Exception as error:  # compile needs a working C++ toolchain; report instead of dying
                runs.append({"mode": mode, "compile": compiled, "error": f"{type(error).__name__}: {error}"[:500]})
    best_full = max((r["mfu_best_step"] for r in runs if r.get("mode") == "full" and "mfu" in r), default=None)
    result = {
        "benchmark": "train_throughput",
        "model": {"layers": args.layers, "hidden": args.hidden, "vocab": args.vocab, "attn": args.attn},
        "batch": {"sequences": args.batch, "tokens_per_sequence": args.length},
        "optimizer": "AdamW fp32",
        "matmul_peak_flops": peak,
        "flops_formula": "6*N_trained_linear + 4*N_frozen_linear + 12*layers*seq_len*hidden per token",
        "runs": runs,
        "note": "mfu uses the median step, mfu_best_step the fastest (robust to other load on the machine)",
        "best_full_finetune_mfu": best_full,
        "target_full_finetune_mfu": 0.30,
        "meets_target": None if best_full is None else best_full >= 0.30,
        "environment": environment(),
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
