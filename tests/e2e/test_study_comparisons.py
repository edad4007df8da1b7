"""The study's comparison runs: refusal-direction ablation as a run type, and the relearning check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ema_lightning.cli import study_fit
from ema_lightning.domains import DOMAINS
from ema_lightning.report.relearning import recovery_step, relearning_section
from ema_lightning.results import DomainRates, Evaluation, RunResult
from ema_lightning.study import QUIET_ARGS, BaseStage, RelearnStage, Study, StudyError, StudyRun, relearn_requests, run_study

MODEL = "configs/models/tiny_aligned.yaml"
RUN_ARGS = ["--trainer.max_steps=4", "--trainer.val_check_interval=4", "--data.eval_per_domain=3",
            "--data.forget_size=16", "--data.retain_size=16"]
BASE_ARGS = ["--trainer.max_steps=30", "--trainer.val_check_interval=30", "--data.eval_per_domain=3",
             "--model.init_args.scheduler.init_args.total_steps=30"]


def _rates(refused: dict[str, int], total: int = 10) -> DomainRates:
    return DomainRates({d: refused.get(d, 0) for d in DOMAINS}, {d: total for d in DOMAINS})


def _evaluation(step: int, refused: dict[str, int]) -> Evaluation:
    return Evaluation("baseline" if step == 0 else "val", step, 0, _rates(refused), _rates({}))


def test_recovery_step_is_the_first_step_at_half_the_aligned_refusal():
    history = [_evaluation(0, {"safety": 0}), _evaluation(2, {"safety": 4}), _evaluation(4, {"safety": 6}),
               _evaluation(8, {"safety": 9})]
    assert recovery_step(1.0, history, "safety") == 4  # 40% < 50% at step 2; 60% at step 4
    assert recovery_step(0.6, history, "safety") == 2  # half of 60% is 30%: reached at step 2
    assert recovery_step(1.0, history, "bias") is None  # never
    assert recovery_step(0.0, history, "safety") is None  # nothing to recover


def test_relearning_section_reports_each_domain_of_each_checked_run():
    aligned = _evaluation(0, {d: 10 for d in DOMAINS})
    unlearned = RunResult("cyber_npo", "cybersecurity", "npo", False, 0, "", (aligned, _evaluation(4, {})))
    check = RunResult("cyber_npo_relearn", "cybersecurity", "relearn", False, 0, "",
                      (_evaluation(0, {}), _evaluation(2, {"cybersecurity": 8}), _evaluation(4, {"cybersecurity": 9, "safety": 6})),
                      group="cyber_npo")
    text = relearning_section([check], [unlearned])
    row = next(line for line in text.splitlines() if line.startswith("| `cyber_npo`"))
    # 9 of 10 and 6 of 10 refused at the last step: Wilson 95% intervals [60-98] and [31-83]
    assert "| 0, 2, 4 |" in row and "**2** (90% [60-98])" in row and "| 4 (60% [31-83]) |" in row
    assert row.count("> 4 (0% [0-28])") == 5


def _result(name, group, contained=False, method="npo", log_dir=""):
    return RunResult(name, "cybersecurity", method, contained, 0, log_dir, (), group=group)


def test_relearn_requests_take_the_first_seed_of_each_unlearned_run_with_an_adapter(tmp_path):
    runs_dirs = {}
    for name in ("npo_seed0", "npo_seed1", "npo_retain_seed0", "ablation_seed0", "noexport_seed0"):
        runs_dirs[name] = tmp_path / name
        if name != "noexport_seed0":
            (tmp_path / name / "export" / "adapter").mkdir(parents=True)
            (tmp_path / name / "export" / "adapter" / "adapter_config.json").write_text("{}")
    results = [_result("npo_seed0", "npo", log_dir=str(runs_dirs["npo_seed0"])),
               _result("npo_seed1", "npo", log_dir=str(runs_dirs["npo_seed1"])),
               _result("npo_retain_seed0", "npo_retain", contained=True, log_dir=str(runs_dirs["npo_retain_seed0"])),
               _result("ablation_seed0", "ablation", method="refusal_ablation", log_dir=str(runs_dirs["ablation_seed0"])),
               _result("noexport_seed0", "noexport", log_dir=str(runs_dirs["noexport_seed0"]))]
    runs = [StudyRun(g, [MODEL]) for g in ("npo", "npo_retain", "ablation", "noexport")]
    study = Study("t", runs, relearn=RelearnStage(max_steps=6, val_check_interval=2, args=["--x=1"]), output_dir=str(tmp_path))
    pairs = relearn_requests(study, results, [["--a"]] * 5, [("model.init_args.backbone.name_or_path", "base")])
    assert [(r.name, q.name) for r, q in pairs] == [("npo_seed0", "npo_seed0_relearn")]
    args = pairs[0][1].args
    assert args[:2] == (*QUIET_ARGS, "--a") and args[-1] == "--x=1"  # the study's quiet flags, the run's, the stage's last
    for expected in ("--model.init_args.forget_objective=relearn", "--model.init_args.alpha=0.0", "--trainer.max_steps=6",
                     "--trainer.val_check_interval=2", "--data.forget=null", "--seed_everything=0",
                     f"--model.init_args.backbone.adapter={runs_dirs['npo_seed0'] / 'export' / 'adapter'}"):
        assert expected in args
    assert pairs[0][1].overrides == (("model.init_args.backbone.name_or_path", "base"),)
    study.relearn.runs = ["nope"]
    with pytest.raises(StudyError, match="nope"):
        relearn_requests(study, results, [[]] * 5, [])


def test_relearn_refuses_compliant_forget_responses(in_repo, tmp_path):
    from ema_lightning.cli import main

    with pytest.raises(ValueError, match="trains toward refusals"):
        main(["fit", "--config", "configs/tiny_cpu.yaml", "--model.init_args.forget_objective=relearn",
              "--data.forget=[{path: 'builtin:compliance'}]", "--trainer.max_steps=1",
              f"--trainer.logger.init_args.save_dir={tmp_path}"])


@pytest.mark.slow
def test_study_with_an_ablation_run_and_the_relearning_check(in_repo, tmp_path):
    runs = [StudyRun("cyber_compliance", [MODEL, "configs/unlearning/compliance_cybersecurity.yaml"], RUN_ARGS),
            StudyRun("cyber_domain_ablation", [MODEL, "configs/ablation/domain_cybersecurity.yaml"], ["--data.eval_per_domain=3"])]
    study = Study("test", runs, base=BaseStage(["configs/study/tiny/align.yaml"], BASE_ARGS, output=str(tmp_path / "base"), strict=False),
                  output_dir=str(tmp_path / "out"), args=["--trainer.enable_progress_bar=false"],
                  relearn=RelearnStage(max_steps=2))
    report = run_study(study, study_fit)
    results = json.loads((report.parent / "results.json").read_text())
    methods = {r["name"]: r["method"] for r in results["runs"]}
    assert methods == {"cyber_compliance": "compliance", "cyber_domain_ablation": "domain_ablation"}
    ablation = next(r for r in results["runs"] if r["name"] == "cyber_domain_ablation")
    assert [(e["stage"], e["step"]) for e in ablation["evaluations"]] == [("baseline", 0), ("val", 1)]
    assert (Path(ablation["log_dir"]) / "ablation" / "selection.json").is_file()
    (check,) = results["relearning"]
    assert check["group"] == "cyber_compliance" and check["method"] == "relearn"
    assert [e["step"] for e in check["evaluations"]] == [0, 2]  # the EvalSchedule of tiny_aligned.yaml decides: the end
    text = report.read_text()
    assert "### Target Cybersecurity, domain_ablation" in text and "| ablated" in text
    assert "## Relearning check" in text and "| `cyber_compliance` | 0, 2 |" in text
    claims = text[text.index("## The paper's four claims"):]
    assert "domain_ablation" not in claims  # the claims are about unlearning
