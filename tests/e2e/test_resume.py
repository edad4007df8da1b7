"""Kill a CPU run with SIGKILL mid-epoch, resume from its last checkpoint, end with the adapter of an uninterrupted run.

Both runs are real `python -m ema_lightning fit` subprocesses on the tiny config. What must survive the
kill: adapter weights (the checkpoint holds only those), AdamW moments, the StepLR schedule, the
global step, the data position of the forget and the cycling retain loader (`ResumableTrainSampler`),
the RNG state (LoRA dropout is on, so a wrong torch RNG state changes the weights) and NPO's cached
reference log-probs. The adapters must be bit-identical.

The forget set gives 3 batches per epoch and the retain set 2 (it cycles), 8 steps in all: the kill
at step 4 lands in the middle of epoch 1, with the retain loader in the middle of its second pass.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

HERE = Path(__file__).resolve().parent  # the subprocesses import this module by name
ROOT = HERE.parents[1]
MAX_STEPS = 8
KILL_AFTER = 4  # steps done (and checkpointed) when the run is killed

RUN_CONFIG = """
trainer:
  max_steps: {max_steps}
  val_check_interval: 6
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: "{logs}"}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: "{checkpoints}", every_n_train_steps: 2, save_top_k: -1, save_last: true, filename: "{{step}}"}}
model:
  init_args:
    max_new_tokens: 2
    scheduler:
      class_path: torch.optim.lr_scheduler.StepLR
      init_args: {{step_size: 3, gamma: 0.5}}
data:
  forget_size: 24
  retain_size: 16
  eval_per_domain: 1
"""


class StallAfterStep(pl.Callback):
    """Write `marker` and sleep once `step` steps are done and checkpointed, so the test can kill the
    process at a known point (the checkpoint of step N is written in step N's `on_train_batch_end`;
    this runs at the start of step N+1)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(str(trainer.global_step))
            time.sleep(600)


def _command(tmp: Path, name: str, extra: list[str]) -> tuple[list[str], Path]:
    config = tmp / f"{name}.yaml"
    config.write_text(RUN_CONFIG.format(max_steps=MAX_STEPS, logs=tmp / name / "logs", checkpoints=tmp / name / "checkpoints"))
    args = [
        sys.executable, "-m", "ema_lightning", "fit", "--config", "configs/tiny_cpu.yaml", "--config", str(config),
        "--model.init_args.backbone.lora.dropout=0.1", *extra,
    ]
    return args, tmp / name


def _env() -> dict[str, str]:
    # one thread: the same float reductions in every process
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def _run(args: list[str]) -> None:
    done = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (path,) = run_dir.glob("logs/*/version_*/export/adapter/adapter_model.safetensors")
    return load_file(path)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_adapter(tmp_path):
    args, straight = _command(tmp_path, "straight", [])
    _run(args)

    marker = tmp_path / "stalled"
    args, killed = _command(
        tmp_path, "killed",
        ["--trainer.callbacks+=test_resume.StallAfterStep", f"--trainer.callbacks.step={KILL_AFTER}", f"--trainer.callbacks.marker={marker}"],
    )
    process = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(f"run ended (rc {process.returncode}) before step {KILL_AFTER}: {process.stderr.read()[-4000:]}")
            assert time.monotonic() < deadline, "no stall marker after 150 s"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    checkpoint = killed / "checkpoints" / f"step={KILL_AFTER}.ckpt"
    assert checkpoint.exists(), sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert not list(killed.glob("logs/*/version_*/export")), "the killed run must not have finished"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    # adapter-only checkpoint: every weight is a LoRA weight
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"]), list(state["state_dict"])[:5]
    assert state["global_step"] == KILL_AFTER

    args, _ = _command(tmp_path, "killed", [f"--ckpt_path={checkpoint}"])
    _run(args)

    one, two = _adapter(straight), _adapter(killed)
    assert one.keys() == two.keys() and one
    for key in one:
        assert torch.equal(two[key], one[key]), (key, float((two[key] - one[key]).abs().max()))
    # the weights moved: an adapter still at its initialisation would match trivially
    assert any(float(v.abs().max()) > 0 for k, v in one.items() if "lora_B" in k)
