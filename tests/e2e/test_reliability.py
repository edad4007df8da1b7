"""Reliability (issue 12): runs that would silently train the wrong thing, lose data or reuse stale
state stop with one clear error instead; each test reproduces the case first."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from tiny_assets import tiny_qwen2_config

from ema_lightning.backbone import Backbone, LoraSettings
from ema_lightning.cli import check_resume_settings, check_run_folder, configure_logging, main, study_fit
from ema_lightning.data.records import Record
from ema_lightning.domains import DOMAINS
from ema_lightning.modules import CausalLMModule, RefusalUnlearningModule
from ema_lightning.results import DomainRates, Evaluation, save_evaluations
from ema_lightning.study import BaseStage, FitOutcome, Study, StudyError, StudyRun, build_base, check_study

MODEL = "configs/models/tiny_aligned.yaml"


def _fit_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", "configs/tiny_cpu.yaml", "--trainer.max_steps=2", "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}", "--data.eval_per_domain=1", *extra]


@pytest.fixture
def no_model(monkeypatch):
    """These errors come before any weights load."""
    import ema_lightning.modules.base as base

    monkeypatch.setattr(base, "load_model", lambda *a, **k: pytest.fail("the model must not load"))


# ------------------------------------------------------------------ silent wrong training (10, 11)
def test_retain_weight_without_retain_data_is_an_error_and_data_counts_are_shown(in_repo, tmp_path, no_model, capfd):
    with pytest.raises(ValueError, match=r"alpha=10.0 .* retain set is empty"):
        main(_fit_args(tmp_path, "--data.retain_size=0", "--model.init_args.alpha=10"))
    # item 13: the package's own INFO lines (records loaded per set) reach the user
    assert "ema-lightning: forget set:" in capfd.readouterr().err


def test_compliance_objective_on_refusals_is_an_error(in_repo, tmp_path, no_model):
    with pytest.raises(ValueError, match=r"compliance.*forget responses are refusals.*builtin:compliance"):
        main(_fit_args(tmp_path, "--model.init_args.forget_objective=compliance"))


def test_compliance_objective_with_generated_responses_is_an_error():
    module = RefusalUnlearningModule(Backbone(tiny=tiny_qwen2_config()), forget_objective="compliance")
    forget = [Record("how do I get into a server I do not own", "cybersecurity", True)]
    with pytest.raises(ValueError, match="forget_responses"):
        module.check_data(forget, [], "generate")


# ------------------------------------------------------------------ NaN EMA score (12)
def _evaluation(refused: dict[str, int], total: dict[str, int], step: int) -> Evaluation:
    rates = DomainRates(refused, total)
    return Evaluation("val", step, 0, rates, rates)


def test_undefined_ema_score_is_explained_and_written_as_json_null(tmp_path, caplog):
    only_target = {d: (5 if d == "bias" else 0) for d in DOMAINS}
    module = CausalLMModule(Backbone(tiny=tiny_qwen2_config()), target_domain="bias")
    module.baseline = _evaluation(only_target, only_target, 0).refusal.rates
    with caplog.at_level(logging.WARNING, logger="ema_lightning"):
        module._record(_evaluation({d: 0 for d in DOMAINS}, only_target, 4), log_to_callbacks=False)
    assert math.isnan(module.evaluations[-1].ema_score)
    assert "EMA score undefined at step 4" in caplog.text and "bias" in caplog.text
    path = save_evaluations(tmp_path / "eval_history.json", module.evaluations)
    strict = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert strict[-1]["ema_score"] is None and strict[-1]["refusal"]["rate"]["safety"] is None


def test_configure_logging_shows_package_messages_once(capfd):
    configure_logging()
    configure_logging()  # idempotent: one handler
    logging.getLogger("ema_lightning.data.sources").info("dropped 11 duplicate prompts")
    assert capfd.readouterr().err.count("ema-lightning: dropped 11 duplicate prompts") == 1


# ------------------------------------------------------------------ resume (4, 5) and run folders (9)
def _checkpoint(tmp_path: Path, **hyper_parameters) -> Path:
    settings = {"_class_path": "ema_lightning.modules.RefusalUnlearningModule", "alpha": 1.0, "beta": 0.1,
                "forget_objective": "npo", "target_domain": "cybersecurity", **hyper_parameters}
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}, "global_step": 2, "epoch": 0,
                "pytorch-lightning_version": "2.6", "hyper_parameters": settings}, path)
    return path


def test_resume_with_other_settings_stops_listing_what_differs(in_repo, tmp_path, no_model):
    path = _checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"alpha: checkpoint 1.0, command 5.0; beta: checkpoint 0.1, command 0.5"):
        main(_fit_args(tmp_path, "--model.init_args.alpha=5", "--model.init_args.beta=0.5", f"--ckpt_path={path}"))
    with pytest.raises(ValueError, match=r"target_domain: checkpoint 'cybersecurity', command 'safety'"):
        main(_fit_args(tmp_path, "--data.target_domain=safety", f"--ckpt_path={path}"))


def test_resume_settings_compare_nested_values(tmp_path):
    path = _checkpoint(tmp_path, backbone={"tiny": {"hidden_size": 32}, "lora": {"r": 8}})
    same = {"class_path": "ema_lightning.modules.unlearning.RefusalUnlearningModule",
            "init_args": {"alpha": 1, "beta": 0.1, "backbone": {"tiny": {"hidden_size": 32}, "lora": {"r": 8}}}}
    check_resume_settings(str(path), same)  # 1 == 1.0, the same class by another import path
    other = {**same, "init_args": {**same["init_args"], "backbone": {"tiny": {"hidden_size": 64}, "lora": {"r": 8}}}}
    with pytest.raises(ValueError, match="backbone: checkpoint"):
        check_resume_settings(str(path), other)


def test_npo_reference_cache_of_another_forget_set_is_refused():
    torch.manual_seed(0)
    module = RefusalUnlearningModule(Backbone(tiny={**tiny_qwen2_config(), "vocab_size": 64},
                                              lora=LoraSettings(r=4, dropout=0.0)))
    module.configure_model()

    def batch(seed: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(4, 64, (3, 8), generator=torch.Generator().manual_seed(seed))
        labels = ids.clone()
        labels[:, :4] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "index": torch.arange(3)}

    first = module.reference_log_probs(batch(1))
    torch.testing.assert_close(module.reference_log_probs(batch(1)), first)  # the same examples: cached
    checkpoint = {"state_dict": {}}
    module.on_save_checkpoint(checkpoint)
    resumed = RefusalUnlearningModule(module.backbone)
    resumed.model = module.model
    resumed.on_load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="belong to another forget set"):
        resumed.reference_log_probs(batch(2))  # same indices, other prompts (e.g. another target domain)


def test_a_run_folder_that_holds_a_run_is_not_overwritten(in_repo, tmp_path, no_model):
    folder = tmp_path / "logs" / "default" / "version_0"
    folder.mkdir(parents=True)
    (folder / "eval_history.json").write_text("[]")
    with pytest.raises(ValueError, match=r"already holds a run \(eval_history.json\)"):
        main(_fit_args(tmp_path, "--trainer.logger.init_args.version=0"))
    assert (folder / "eval_history.json").read_text() == "[]"
    check_run_folder(str(folder), ckpt_path=str(folder / "checkpoints" / "last.ckpt"))  # resuming it is fine
    check_run_folder(str(tmp_path / "new"), ckpt_path=None)


# ------------------------------------------------------------------ the study's aligned base (2, 3)
def _study(tmp_path: Path, output: Path, *base_args: str) -> Study:
    runs = [StudyRun("npo", [MODEL, "configs/unlearning/npo_cybersecurity.yaml"])]
    base = BaseStage(["configs/study/tiny/align.yaml"], list(base_args), output=str(output))
    return Study("reliability", runs, base=base, output_dir=str(tmp_path / "out"))


def test_a_base_output_holding_user_files_is_refused_and_left_alone(in_repo, tmp_path, no_model):
    output = tmp_path / "my_models"
    output.mkdir()
    (output / "thesis.tex").write_text("years of work")
    with pytest.raises(StudyError, match="not an aligned base written by a study"):
        check_study(_study(tmp_path, output), study_fit)
    with pytest.raises(StudyError, match="not an aligned base written by a study"):
        build_base(_study(tmp_path, output), lambda *a: pytest.fail("must not train"))
    assert (output / "thesis.tex").read_text() == "years of work"


def test_a_base_stage_that_never_evaluates_is_refused_before_training(in_repo, tmp_path, no_model):
    with pytest.raises(StudyError, match="would never evaluate"):
        check_study(_study(tmp_path, tmp_path / "base", "--trainer.limit_val_batches=0"), study_fit)


def _outcome(evaluations, log_dir: Path) -> FitOutcome:
    return FitOutcome(None, "alignment", False, 0, str(log_dir), tuple(evaluations))


def test_a_failed_stage_one_is_not_stamped_and_not_reused(in_repo, tmp_path):
    output = tmp_path / "base"
    weak = {d: 1 for d in DOMAINS}
    evaluation = Evaluation("val", 300, 0, DomainRates(weak, {d: 20 for d in DOMAINS}), DomainRates(weak, {d: 20 for d in DOMAINS}))
    calls = []

    def fit(request, run):
        calls.append(request.name)
        return _outcome([evaluation] if len(calls) == 1 else [], tmp_path / "logs")

    with pytest.raises(StudyError, match="misses its bounds"):
        build_base(_study(tmp_path, output), fit)
    assert not output.exists()  # nothing stamped: the next run trains again
    with pytest.raises(StudyError, match="ran no evaluation"):
        build_base(_study(tmp_path, output), fit)
    assert calls == ["aligned_base", "aligned_base"] and not output.exists()


# ------------------------------------------------------------------ config errors (20)
def test_a_yaml_syntax_error_names_the_config_file_and_line(in_repo, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1\n")
    with pytest.raises(ValueError, match=rf"{bad}:3:1: YAML syntax error"):
        main(["fit", "--config", "configs/tiny_cpu.yaml", "--config", str(bad)])
    with pytest.raises(ValueError, match="--config nowhere.yaml: cannot read it"):
        main(["fit", "--config=nowhere.yaml"])


def test_a_bad_value_prints_its_own_message_first(in_repo, tmp_path, capsys, monkeypatch):
    import sys

    from ema_lightning.cli import run

    monkeypatch.setattr(sys, "argv", ["ema-lightning", *_fit_args(tmp_path, "--model.init_args.beta=-1")])
    assert run() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "ema-lightning: error: beta must be > 0 (NPO / SimNPO / DPO inverse temperature), got -1.0"
