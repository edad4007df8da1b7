"""The CLI end to end on the tiny CPU config: fit, TensorBoard scalars, adapter export, bad data."""

from pathlib import Path

import pytest
import torch

from ema_lightning.cli import main
from ema_lightning.domains import DOMAINS

FAST = [
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=2",
    "--data.eval_per_domain=2",
    "--data.retain_size=16",
    "--data.forget_size=16",
]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow  # ~50 s on the shared 2-core CPU; test_checkpoint_holds_only_adapters_and_validates fits in the fast set
def test_fit_tiny_cpu_logs_seven_domains_and_exports_a_loadable_adapter(in_repo, tmp_path):
    cli = main(["fit", "--config", "configs/tiny_cpu.yaml", *FAST, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    log_dir = Path(cli.trainer.log_dir)
    scalars = _scalars(log_dir)
    for domain in DOMAINS:
        steps = [s for s, _ in scalars[f"val/refusal/{domain}"]]
        assert steps[0] == 0 and max(steps) == 4  # baseline at step 0, then during training
        assert f"val/over_refusal/{domain}" in scalars
    assert "val/ema_score" in scalars and "train/forget" in scalars and "train/retain" in scalars
    assert [s for s, _ in scalars["val/utility/nll"]] == [s for s, _ in scalars["val/refusal/bias"]]  # every evaluation
    assert (log_dir / "config.yaml").is_file() and (log_dir / "eval_history.json").is_file()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    export = log_dir / "export"
    base = AutoModelForCausalLM.from_pretrained(export / "base")
    model = PeftModel.from_pretrained(base, export / "adapter")
    trained = {k: v for k, v in cli.model.model.state_dict().items() if "lora_B" in k}
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert trained.keys() == loaded.keys() and trained
    for key in trained:
        torch.testing.assert_close(trained[key], loaded[key])
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(model(ids).logits, cli.model.model(input_ids=ids).logits)


def test_checkpoint_holds_only_adapters_and_validates(in_repo, tmp_path):
    cli = main(["fit", "--config", "configs/tiny_cpu.yaml", *FAST, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    ckpt = next(Path(cli.trainer.log_dir, "checkpoints").glob("*.ckpt"))
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)
    result = main(["validate", "--config", "configs/tiny_cpu.yaml", *FAST, f"--ckpt_path={ckpt}",
                   f"--trainer.logger.init_args.save_dir={tmp_path / 'val'}"])
    refused = [result.trainer.callback_metrics[f"val/refusal/{d}"] for d in DOMAINS]
    assert all(0.0 <= float(r) <= 1.0 for r in refused)
    assert float(result.trainer.callback_metrics["val/utility/nll"]) > 0  # the utility loader went to its metric


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"prompt": "hi", "domain": "bias", "harmful": true}\n{"prompt": "x", "domain": \n', ["bad.jsonl:2", "invalid JSON"]),
        ('{"prompt": "hi", "domain": "bias", "harmful": true}\n{"domain": "bias", "harmful": true}\n', ["bad.jsonl:2", "prompt"]),
        ('{"prompt": "hi", "domain": "finance", "harmful": true}\n', ["bad.jsonl:1", "domain", *DOMAINS]),
    ],
)
def test_bad_record_file_stops_before_the_model_loads(in_repo, tmp_path, monkeypatch, content, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    loaded = []
    import ema_lightning.modules.base as base

    monkeypatch.setattr(base, "load_model", lambda *a, **k: loaded.append(1))
    logs = tmp_path / "logs"
    with pytest.raises(ValueError) as error:
        main(["fit", "--config", "configs/tiny_cpu.yaml", f"--data.train=[{{path: {bad}}}]",
              f"--trainer.logger.init_args.save_dir={logs}"])
    message = str(error.value)
    for part in expected:
        assert part in message
    assert message.count("\n") <= 1
    assert not loaded
    assert not logs.exists() or not any(logs.rglob("*"))


@pytest.mark.parametrize("precision, native, warns", [("bf16-mixed", False, True), ("bf16-mixed", True, False),
                                                      ("32-true", False, False)])
def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(precision, native, warns, monkeypatch, caplog):
    from lightning.pytorch import Trainer

    from ema_lightning.cli import warn_emulated_bf16

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    with caplog.at_level("WARNING", logger="ema_lightning"):
        warn_emulated_bf16(Trainer(accelerator="cpu", precision=precision, logger=False))
    assert ("--trainer.precision=32-true" in caplog.text) == warns


@pytest.mark.parametrize("fails", [False, True])
def test_a_finished_run_destroys_its_process_group(fails, monkeypatch):
    """After a run that ended normally the console entry destroys the process group (left alive, gloo's
    threads can abort the process at exit); after an error it leaves it, so no failed rank waits on others."""
    import socket

    import torch.distributed as dist

    from ema_lightning import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        def command() -> None:
            if fails:
                raise ValueError("data.eval: no records")

        monkeypatch.setattr(cli, "main", command)
        assert cli.run() == (2 if fails else 0)
        assert dist.is_initialized() == fails
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
