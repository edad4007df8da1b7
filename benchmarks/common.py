"""Shared benchmark helpers: machine matmul peak, peak memory, timing, model FLOPs, Qwen2-shaped configs."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable

import torch


def measured_matmul_peak(size: int = 2048, seconds: float = 2.0, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a square ``size`` matmul loop on this machine with the current thread count.

    Each ``a @ b`` costs ``2 * size**3`` FLOPs; best of several timed rounds after a warm-up, so the
    number is what the BLAS reaches here, the denominator of model FLOPs utilisation.
    """
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up
    flops_per_matmul = 2.0 * size**3
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        repeats = 4
        for _ in range(repeats):
            torch.matmul(a, b, out=out)
        best = max(best, repeats * flops_per_matmul / (time.perf_counter() - start))
    return best


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def time_steps(step: Callable[[], object], steps: int, warmup: int = 1) -> dict[str, float]:
    """Run ``step`` ``warmup`` times untimed, then ``steps`` times; seconds per step (median, min, mean)."""
    for _ in range(warmup):
        step()
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(durations),
        "min_s": min(durations),
        "mean_s": statistics.fmean(durations),
        "steps": steps,
    }


def linear_parameters(model: torch.nn.Module, trainable: bool | None = None) -> int:
    """Weights of all ``nn.Linear`` layers (the matmul parameters, incl. the LM head, excl. embeddings).

    ``trainable`` True / False restricts to weights with / without ``requires_grad``.
    """
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            for parameter in (module.weight,):
                if trainable is None or parameter.requires_grad == trainable:
                    total += parameter.numel()
    return total


def training_flops_per_token(
    model: torch.nn.Module, num_layers: int, hidden_size: int, sequence_length: int
) -> float:
    """Model FLOPs per trained token (PaLM appendix B style, excluding the embedding lookup).

    ``6 * N_trainable + 4 * N_frozen + 12 * L * T * d``, where N are ``nn.Linear`` weights (the
    LM head included): a trained weight costs 2 FLOPs forward, 2 for the input gradient and 2 for
    the weight gradient per token; a frozen weight (LoRA base) needs no weight gradient. The
    attention scores and the weighted sum cost ``2 * 2 * T * d`` per token and layer forward, three
    times that with the backward (the causal mask is not discounted, as in PaLM).
    With full fine-tuning N_frozen = 0 and this is the usual ``6N + 12LTd``.
    """
    trained = linear_parameters(model, trainable=True)
    frozen = linear_parameters(model, trainable=False)
    return 6.0 * trained + 4.0 * frozen + 12.0 * num_layers * sequence_length * hidden_size


def qwen2_config(
    num_layers: int, hidden_size: int, vocab_size: int, intermediate_size: int | None = None, head_dim: int = 64
) -> dict:
    """A Qwen2-shaped config dict (GQA with 4 query heads per kv head, SwiGLU MLP, RMSNorm, untied head)."""
    heads = max(1, hidden_size // head_dim)
    return {
        "model_type": "qwen2",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 4),
        "vocab_size": vocab_size,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


def random_batch(batch_size: int, sequence_length: int, vocab_size: int, prompt_length: int, seed: int = 0):
    """input_ids and labels (prompt positions set to -100), like a forget / retain TokenBatch."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (batch_size, sequence_length), generator=generator)
    labels = input_ids.clone()
    labels[:, :prompt_length] = -100
    return input_ids, labels


def environment() -> dict:
    """What the numbers depend on."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
    }


def emit(result: dict) -> None:
    """Print the benchmark's single JSON object."""
    print(json.dumps(result, indent=2, sort_keys=False))
