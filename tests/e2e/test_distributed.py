"""1 process vs 2 processes (DDP and FSDP2, gloo on CPU): same refusal counts, same losses, no eval prompt lost.

Each run is a real `python -m ema_lightning fit` subprocess (Lightning's launcher starts the second
process from that command line). What is compared: the 1-process run trains with batch_size 8, the
2-process runs with batch_size 4 per rank, so every optimizer step sees the same global batch of 8
(`ResumableTrainSampler` cuts the same seeded permutation into the same global batches on any world
size). The eval set has an odd size, so the second rank's shard is padded with one invalid copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch


HERE = Path(__file__).resolve().parent  # the subprocesses import this module by name
ROOT = HERE.parents[1]
EVAL_SIZE = 41  # rows read; capped at 3 per domain and harmful/benign: an odd total

# Loss tolerance: the retain cross-entropy is a token mean per rank, averaged over ranks by DDP, which
# weights tokens slightly differently from one token mean over the global batch; NPO's forget term is
# a per-sequence mean and matches to float precision.
LOSS_RTOL = 0.05
# Adapter tolerance after two AdamW steps at lr 1e-3: Adam moves each weight by about lr per step
# whatever the gradient's size, so where a gradient is near zero (lora_A at the first steps, with lora_B
# starting at zero) the tiny difference above can flip the sign of a step. Per element and step the
# runs then differ by up to 2 x lr (one step each way): over 2 steps 4e-3 (measured: 2.0e-3).
ADAM_BOUND = 2 * 2 * 1.0e-3 + 1e-4


class TextHashJudge:
    """Refused iff a checksum of the response text is even: any change in generated text shows up,
    and a random tiny model gets refusal rates strictly between 0 and 1."""

    def __call__(self, responses: list[str], prompts: list[str] | None = None) -> list[bool]:
        return [zlib.crc32(r.encode("utf-8")) % 2 == 0 for r in responses]


class EvalCountCallback(pl.Callback):
    """Write each rank's own (unsynced) refusal counts per validation, before the module syncs and resets them."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.calls = 0

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        rows = {}
        metrics = pl_module.evaluator.stages["val"]
        for name, metric in (("val_refusal", metrics.refusal), ("val_over_refusal", metrics.over_refusal)):
            rows[name] = {"refused": metric.sum.long().tolist(), "total": metric.count.tolist()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"counts_rank{trainer.global_rank}_{self.calls}.json"
        path.write_text(json.dumps({"step": trainer.global_step, **rows}))
        self.calls += 1


def _fit(tmp: Path, name: str, extra: list[str], command: str = "fit") -> tuple[Path, Path]:
    logs, counts = tmp / name, tmp / f"{name}_counts"
    args = [
        sys.executable, "-m", "ema_lightning", command, "--config", "configs/tiny_cpu.yaml",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={logs}",
        "--data.forget_size=16", "--data.retain_size=16", "--data.eval_batch_size=8",
        f"--data.eval=[{{path: 'builtin:eval', limit: {EVAL_SIZE}}}]", "--data.eval_per_domain=3",
        "--model.init_args.max_new_tokens=4", "--model.init_args.judge=test_distributed.TextHashJudge",
        "--trainer.callbacks+=test_distributed.EvalCountCallback", f"--trainer.callbacks.out_dir={counts}",
        "--trainer.callbacks+=ema_lightning.concepts.callback.ConceptVectorCallback",
        "--trainer.callbacks.max_prompts_per_domain=2",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return next(logs.glob("*/version_*")), counts


def _counts(counts: Path, call: int) -> dict[str, torch.Tensor]:
    files = sorted(counts.glob(f"counts_rank*_{call}.json"))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        row = json.loads(f.read_text())
        for name in ("val_refusal", "val_over_refusal"):
            for key in ("refused", "total"):
                value = torch.tensor(row[name][key])
                out[f"{name}/{key}"] = out.get(f"{name}/{key}", 0) + value
    out["ranks"] = torch.tensor(len(files))
    return out


def _losses(log_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if tag.startswith("train/")}


STRATEGY_ARGS = {
    "single": ["--data.batch_size=8"],
    "ddp": ["--config", "configs/strategies/ddp.yaml", "--trainer.devices=2", "--data.batch_size=4"],
    "fsdp2": ["--config", "configs/strategies/fsdp2_cpu.yaml", "--data.batch_size=4"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    done: dict[str, tuple[Path, Path]] = {}

    def get(name: str, ablate: bool = False) -> tuple[Path, Path]:
        key = f"{name}_ablation" if ablate else name
        if key not in done:
            extra = ["--config", "configs/ablation/refusal_direction.yaml"] if ablate else []
            done[key] = _fit(tmp, key, STRATEGY_ARGS[name] + extra, "ablate" if ablate else "fit")
        return done[key]

    return get


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_give_the_numbers_of_one(runs, strategy):
    single_dir, single_counts = runs("single")
    multi_dir, multi_counts = runs(strategy)
    for call in (0, 1):  # the step-0 baseline (sanity check) and the evaluation after 2 steps
        one, two = _counts(single_counts, call), _counts(multi_counts, call)
        assert int(one["ranks"]) == 1 and int(two["ranks"]) == 2
        # every eval prompt counted exactly once, the padding copy of the short shard not at all
        size = int(one["val_refusal/total"].sum() + one["val_over_refusal/total"].sum())
        assert size % 2 == 1  # the eval set does not divide by 2 ranks
        assert int(two["val_refusal/total"].sum() + two["val_over_refusal/total"].sum()) == size
        for key in ("val_refusal/refused", "val_refusal/total", "val_over_refusal/refused", "val_over_refusal/total"):
            assert torch.equal(one[key], two[key]), (call, key)

    one_hist = json.loads((single_dir / "eval_history.json").read_text())
    two_hist = json.loads((multi_dir / "eval_history.json").read_text())
    assert [h["step"] for h in one_hist] == [h["step"] for h in two_hist] == [0, 2]
    for a, b in zip(one_hist, two_hist):
        # the recorded evaluations hold the synced counts: equal per domain (a rate without prompts is null in both)
        for kind in ("refusal", "over_refusal"):
            assert a[kind] == b[kind], (a["step"], kind, a[kind], b[kind])
        assert sum(a["refusal"]["total"].values()) > 0
        # the utility NLL: a mean over every answer token of both ranks' shards (step 0: the same weights)
        assert b["utility_nll"] == pytest.approx(a["utility_nll"], rel=1e-4 if a["step"] == 0 else LOSS_RTOL)

    one_loss, two_loss = _losses(single_dir), _losses(multi_dir)
    for tag in ("train/loss", "train/forget", "train/retain"):
        torch.testing.assert_close(torch.tensor(two_loss[tag]), torch.tensor(one_loss[tag]), rtol=LOSS_RTOL, atol=1e-4)
    # step 0: same weights, same global batch -> the per-sequence NPO term matches to float precision
    torch.testing.assert_close(torch.tensor(two_loss["train/forget"][0]), torch.tensor(one_loss["train/forget"][0]), rtol=1e-4, atol=1e-5)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_concept_vectors_and_adapter_match_one_process(runs, strategy):
    from safetensors.torch import load_file

    single_dir, _ = runs("single")
    multi_dir, _ = runs(strategy)
    for step in (0, 2):
        one = load_file(single_dir / "concept_vectors" / f"step={step}.safetensors")
        two = load_file(multi_dir / "concept_vectors" / f"step={step}.safetensors")
        assert one.keys() == two.keys() and one
        for key in one:
            if step == 0:  # same weights: float precision
                torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, equal_nan=True)
            else:  # after two Adam steps (see ADAM_BOUND): same direction per layer and domain
                cosine = torch.nn.functional.cosine_similarity(two[key], one[key], dim=-1)
                assert bool((cosine[~cosine.isnan()] > 0.999).all()), (key, cosine)
                assert torch.equal(cosine.isnan(), torch.nn.functional.cosine_similarity(one[key], one[key], dim=-1).isnan())
    one = load_file(single_dir / "export" / "adapter" / "adapter_model.safetensors")
    two = load_file(multi_dir / "export" / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys() and one
    for key in one:
        assert float((two[key] - one[key]).abs().max()) <= ADAM_BOUND, key


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp2_matches_ddp_exactly(runs):
    """Both 2-process runs see the same shards and average the same per-rank gradients: FSDP2's
    reduce-scatter and DDP's all-reduce give the same adapter and concept vectors to float precision."""
    from safetensors.torch import load_file

    ddp_dir, ddp_counts = runs("ddp")
    fsdp2_dir, fsdp2_counts = runs("fsdp2")
    for call in (0, 1):
        a, b = _counts(ddp_counts, call), _counts(fsdp2_counts, call)
        assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("concept_vectors/step=2.safetensors", "export/adapter/adapter_model.safetensors"):
        a, b = load_file(ddp_dir / name), load_file(fsdp2_dir / name)
        assert a.keys() == b.keys() and a
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(torch.tensor(_losses(fsdp2_dir)["train/loss"]), torch.tensor(_losses(ddp_dir)["train/loss"]), rtol=1e-5, atol=1e-6)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_ablation_on_two_processes_matches_one(runs, strategy):
    """The refusal-direction ablation: the same direction, layer choice and evaluations on 2 processes
    (each rank captures and scores every selection prompt, so the choice is the same on every rank)."""
    from safetensors.torch import load_file

    single_dir, single_counts = runs("single", ablate=True)
    multi_dir, multi_counts = runs(strategy, ablate=True)
    one_sel = json.loads((single_dir / "ablation" / "selection.json").read_text())
    two_sel = json.loads((multi_dir / "ablation" / "selection.json").read_text())
    assert one_sel["layer"] == two_sel["layer"]
    for a, b in zip(one_sel["candidates"], two_sel["candidates"]):
        assert b["refusal_score"] == pytest.approx(a["refusal_score"], rel=1e-4, abs=1e-5)
        assert b["kl"] == pytest.approx(a["kl"], rel=1e-3, abs=1e-6)
    one_dir = load_file(single_dir / "ablation" / "direction.safetensors")["direction"]
    two_dir = load_file(multi_dir / "ablation" / "direction.safetensors")["direction"]
    torch.testing.assert_close(two_dir, one_dir, rtol=1e-4, atol=1e-5)
    for call in (0, 1):  # before and with the direction ablated
        one, two = _counts(single_counts, call), _counts(multi_counts, call)
        for key in ("val_refusal/refused", "val_refusal/total", "val_over_refusal/refused", "val_over_refusal/total"):
            assert torch.equal(one[key], two[key]), (call, key)
    one_hist = json.loads((single_dir / "eval_history.json").read_text())
    two_hist = json.loads((multi_dir / "eval_history.json").read_text())
    assert [(h["stage"], h["step"]) for h in one_hist] == [(h["stage"], h["step"]) for h in two_hist] == [("baseline", 0), ("val", 1)]


def test_gpu_check_script_exits_cleanly_without_cuda(monkeypatch, capsys):
    """benchmarks/gpu_check.py imports here; without CUDA it says so and exits with status 2."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import gpu_check
    finally:
        sys.path.remove(str(ROOT))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert set(gpu_check.SHAPES) == {"tiny", "0.5b"} and issubclass(gpu_check.ThroughputCallback, pl.Callback)
