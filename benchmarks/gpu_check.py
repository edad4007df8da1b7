"""GPU check (< 5 min on a CUDA machine): tokens/s and peak memory of real `ema-lightning fit` runs.

Runs, each a `python -m ema_lightning fit` subprocess on the tiny config's data and objective:
- random models of two shapes: `tiny` (hidden 64, 2 layers) and `0.5b` (Qwen2.5-0.5B: hidden 896,
  24 layers, 14 heads, 2 KV heads), bf16-true, LoRA;
- strategies: 1 GPU, DDP and FSDP2 (ModelParallelStrategy) over every GPU present (DDP/FSDP2 need 2+);
- the refusal metric: the tiny model in float32 on 1 GPU against the same run on CPU (same seed, same
  data, greedy generation): per-domain refusal rates and their largest difference.

    python benchmarks/gpu_check.py [--steps 20] [--out gpu_check.json]

Prints one JSON object (also written to --out). Without CUDA it exits with status 2 and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2},
}


class ThroughputCallback(pl.Callback):
    """Per rank: trained tokens (attention mask sums) and seconds of the steps after `warmup`, peak CUDA memory."""

    def __init__(self, out: str, warmup: int = 3) -> None:
        self.out, self.warmup = Path(out), warmup
        self.tokens, self.seconds, self._start = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _synchronize()
        if trainer.global_step > self.warmup:
            self.seconds += time.perf_counter() - self._start
            self.tokens += sum(int(part["attention_mask"].sum()) for part in batch.values())

    def on_train_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        row = {"tokens": self.tokens, "seconds": self.seconds,
               "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(row))


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _fit(tmp: Path, name: str, shape: str, steps: int, extra: list[str], gpu: bool = True) -> dict:
    out = tmp / name
    args = [
        sys.executable, "-m", "ema_lightning", "fit", "--config", "configs/tiny_cpu.yaml",
        f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.logger.init_args.save_dir={out}",
        *[f"--model.init_args.backbone.tiny.{k}={v}" for k, v in SHAPES[shape].items()],
        "--trainer.callbacks+=benchmarks.gpu_check.ThroughputCallback", f"--trainer.callbacks.out={out / 'throughput'}",
        *(["--trainer.accelerator=gpu"] if gpu else ["--trainer.accelerator=cpu"]), *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    row: dict = {"name": name, "seconds_total": round(time.perf_counter() - started, 1), "returncode": done.returncode}
    if done.returncode != 0:
        row["error"] = done.stderr[-2000:]
        return row
    ranks = [json.loads(p.read_text()) for p in sorted((out / "throughput").glob("rank*.json"))]
    tokens, seconds = sum(r["tokens"] for r in ranks), max(r["seconds"] for r in ranks)
    row.update(tokens_per_second=round(tokens / seconds, 1) if seconds else None,
               peak_memory_gib=[round(r["peak_memory_gib"], 3) for r in ranks if r["peak_memory_gib"] is not None])
    history = next(out.glob("*/version_*/eval_history.json"), None)
    if history is not None:
        row["refusal"] = json.loads(history.read_text())[-1]["refusal"]["rate"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="gpu_check.json")
    options = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine.", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    report: dict = {"gpus": gpus, "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": []}
    bf16 = ["--trainer.precision=bf16-true"]
    strategies = {"1gpu": ["--trainer.devices=1"]}
    if gpus >= 2:
        strategies["ddp"] = ["--config", "configs/strategies/ddp.yaml", f"--trainer.devices={gpus}"]
        strategies["fsdp2"] = [
            "--trainer.inference_mode=false", f"--trainer.devices={gpus}",
            "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
            f"--trainer.strategy.data_parallel_size={gpus}", "--trainer.strategy.tensor_parallel_size=1",
        ]
    with tempfile.TemporaryDirectory() as tmp:
        for shape in SHAPES:
            for strategy, extra in strategies.items():
                report["runs"].append({"shape": shape, "strategy": strategy,
                                       **_fit(Path(tmp), f"{shape}_{strategy}", shape, options.steps, bf16 + extra)})
        # The refusal metric: float32, 1 GPU vs CPU, same seed and data.
        gpu = _fit(Path(tmp), "refusal_gpu", "tiny", 4, ["--trainer.devices=1"])
        cpu = _fit(Path(tmp), "refusal_cpu", "tiny", 4, ["--trainer.devices=1"], gpu=False)
    comparison = {"gpu": gpu.get("refusal"), "cpu": cpu.get("refusal")}
    if comparison["gpu"] and comparison["cpu"]:
        diffs = [abs(a - b) for d in comparison["cpu"] if (a := comparison["gpu"][d]) == a and (b := comparison["cpu"][d]) == b]
        comparison["max_abs_difference"] = max(diffs) if diffs else None
    else:
        comparison["error"] = gpu.get("error") or cpu.get("error")
    report["refusal_gpu_vs_cpu"] = comparison
    text = json.dumps(report, indent=1)
    Path(options.out).write_text(text)
    print(text)
    return 0 if all(r["returncode"] == 0 for r in report["runs"]) and "error" not in comparison else 1


if __name__ == "__main__":
    sys.exit(main())
