"""Step-0 measurements shared by runs on one base: measured once, reused with the same numbers."""

import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tiny_assets import tiny_qwen2, tiny_qwen2_config

from ema_lightning.backbone import Backbone, LoraSettings, load_model, load_tokenizer
from ema_lightning.baseline_cache import base_fingerprint, cache_key, is_fresh_adapter, may_share_baseline
from ema_lightning.cli import main
from ema_lightning.concepts.vectors import ConceptVectors

TINY = tiny_qwen2_config(max_position_embeddings=256)


@pytest.fixture
def base(in_repo, tmp_path) -> Path:
    """A file-backed tiny base with the built-in tokenizer, as stage 1 of a study leaves one."""
    tokenizer = load_tokenizer(Backbone(tiny=TINY, tokenizer="builtin"))
    model = load_model(Backbone(tiny={**TINY, "vocab_size": len(tokenizer)}, tokenizer="builtin"))
    directory = tmp_path / "base"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _fit(base: Path, cache: Path, out: Path, calls: dict, monkeypatch, *args: str):
    import ema_lightning.concepts.callback as callback
    import ema_lightning.evaluation.evaluator as module

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(module, "generate", counted("generate", module.generate))
    monkeypatch.setattr(callback, "extract_concept_vectors", counted("concepts", callback.extract_concept_vectors))
    return main([
        "fit", "--config", "configs/models/tiny_aligned.yaml", "--config", "configs/unlearning/npo_cybersecurity.yaml",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--data.eval_per_domain=2", "--data.forget_size=16",
        f"--model.init_args.backbone.name_or_path={base}", f"--model.init_args.baseline_cache={cache}",
        "--model.init_args.export=none", f"--trainer.logger.init_args.save_dir={out}", "--trainer.enable_progress_bar=false",
        *args,
    ])


def test_second_run_reuses_the_baseline_evaluation_and_concept_vectors(base, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first_calls, second_calls = {}, {}
    first = _fit(base, cache, tmp_path / "logs", first_calls, monkeypatch)
    monkeypatch.undo()
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["concepts", "evaluation"]
    second = _fit(base, cache, tmp_path / "logs", second_calls, monkeypatch)
    # run 1: the baseline and the final evaluation (the EvalSchedule's last step), vectors at steps 0 and
    # 2; run 2 measures the final evaluation only, and the final vectors
    assert first_calls["generate"] == 2 * second_calls["generate"] and second_calls["generate"] > 0
    assert first_calls["concepts"] == 2 and second_calls["concepts"] == 1
    assert first.model.evaluations[0] == second.model.evaluations[0] and first.model.evaluations[0].stage == "baseline"
    assert second.model.baseline == first.model.baseline
    vectors = [ConceptVectors.load(Path(cli.trainer.log_dir) / "concept_vectors" / "step=0.safetensors") for cli in (first, second)]
    torch.testing.assert_close(vectors[0].vectors, vectors[1].vectors)


def test_a_run_in_another_precision_measures_its_own_baseline(base, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first_calls, bf16_calls = {}, {}
    _fit(base, cache, tmp_path / "logs", first_calls, monkeypatch)
    monkeypatch.undo()
    import ema_lightning.concepts.callback as callback

    autocast = []
    capture = callback.extract_concept_vectors
    monkeypatch.setattr(callback, "extract_concept_vectors",
                        lambda *a, **k: autocast.append(torch.is_autocast_enabled("cpu")) or capture(*a, **k))
    bf16 = _fit(base, cache, tmp_path / "logs", bf16_calls, monkeypatch, "--trainer.precision=bf16-mixed")
    assert autocast == [True, True]  # the vectors describe the model as the run computes it
    assert bf16_calls == first_calls  # nothing reused: the bf16 baseline is measured, not the float32 one read
    assert len(list(cache.glob("evaluation-*.json"))) == 2 and len(list(cache.glob("concepts-*"))) == 2
    assert [e.stage for e in bf16.model.evaluations] == ["baseline", "val"]


def test_changed_base_files_change_the_key(base):
    backbone = Backbone(name_or_path=str(base), tokenizer="builtin")
    key = cache_key(base=base_fingerprint(backbone))
    assert key == cache_key(base=base_fingerprint(backbone))
    weights = base / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert cache_key(base=base_fingerprint(backbone)) != key
    assert base_fingerprint(Backbone(tiny=TINY)) is None  # random init: never reused


def test_only_file_backed_bases_with_fresh_adapters_may_share_a_baseline(base, tmp_path):
    lora = LoraSettings(r=2)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")  # what Backbone checks of an adapter folder
    assert may_share_baseline(Backbone(name_or_path=str(base), lora=lora))
    assert not may_share_baseline(Backbone(tiny=TINY, lora=lora))  # random init
    assert not may_share_baseline(Backbone(name_or_path=str(base)))  # full fine-tuning
    assert not may_share_baseline(Backbone(name_or_path=str(base), lora=lora, adapter=str(adapter)))  # a trained adapter


def test_only_a_fresh_adapter_counts_as_the_base():
    model = tiny_qwen2(16)
    assert not is_fresh_adapter(model)  # full fine-tuning: measured every time
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert is_fresh_adapter(peft_model)
    with torch.no_grad():
        next(p for n, p in peft_model.named_parameters() if "lora_B" in n)[0, 0] = 1.0
    assert not is_fresh_adapter(peft_model)


def test_fingerprint_reads_only_the_base_folders(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an unset tokenizer must not fingerprint the working directory
    fingerprint = base_fingerprint(Backbone(name_or_path=str(base)))
    (tmp_path / "unrelated.txt").write_text("changes between runs")
    assert base_fingerprint(Backbone(name_or_path=str(base))) == fingerprint and "tokenizer_files" not in fingerprint


def test_a_change_to_the_package_code_changes_the_key(monkeypatch):
    import ema_lightning.baseline_cache as module

    key = cache_key(judge="keyword")
    monkeypatch.setattr(module, "package_digest", lambda: "another version of the judge")
    assert cache_key(judge="keyword") != key


class _Rank0:
    """The trainer surface the cache reads: rank 0 of one process."""

    is_global_zero = True

    class strategy:
        @staticmethod
        def broadcast(value):
            return value


def _evaluation(step: int = 0):
    from ema_lightning.domains import DOMAINS
    from ema_lightning.results import DomainRates, Evaluation

    counts = DomainRates({d: 3 for d in DOMAINS}, {d: 4 for d in DOMAINS})
    return Evaluation("baseline", step, 0, counts, counts)


def _claim_and_store_later(directory: str, key: str, delay: float) -> None:
    import time

    from ema_lightning.baseline_cache import BaselineCache

    cache = BaselineCache(directory)
    assert cache.load_evaluation(key, _Rank0()) is None  # claims the measurement
    time.sleep(delay)
    cache.store_evaluation(key, _evaluation(), _Rank0())


def test_a_run_waits_for_the_baseline_another_process_is_measuring(tmp_path):
    import multiprocessing
    import time

    from ema_lightning.baseline_cache import BaselineCache

    cache = BaselineCache(tmp_path)
    process = multiprocessing.get_context("spawn").Process(target=_claim_and_store_later, args=(str(tmp_path), "k", 3.0))
    process.start()
    while not cache.lock_file("k").exists() and process.is_alive():
        time.sleep(0.05)
    waited = cache.load_evaluation("k", _Rank0())  # blocks until the other process stores
    process.join()
    assert waited is not None and waited.refusal.refused["bias"] == 3
    assert not cache.lock_file("k").exists()


def test_a_lock_left_by_a_dead_process_or_by_this_one_is_taken_over(tmp_path):
    from ema_lightning.baseline_cache import BaselineCache

    cache = BaselineCache(tmp_path)
    cache.lock_file("dead").write_text("999999999")  # no such process
    assert cache.load_evaluation("dead", _Rank0()) is None and cache.lock_file("dead").read_text() == str(os.getpid())
    assert cache.load_evaluation("dead", _Rank0()) is None  # this process's own claim, never stored: measure again
    assert cache.load_evaluation("held", _Rank0(), wait_s=0.0) is None
    cache.lock_file("held").write_text("1")  # pid 1 runs: a held lock, and after wait_s the run measures anyway
    assert cache.load_evaluation("held", _Rank0(), wait_s=0.0) is None
