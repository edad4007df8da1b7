"""The study: config errors caught before training; same seed, same table; the report's parts."""

import json
from pathlib import Path

import pytest

from ema_lightning.domains import DOMAINS
from ema_lightning.cli import study_fit
from ema_lightning.study import BaseStage, Study, StudyError, StudyRun, check_study, run_study

RUN_ARGS = ["--trainer.max_steps=4", "--trainer.val_check_interval=2", "--data.eval_per_domain=3",
            "--data.forget_size=16", "--data.retain_size=16"]
BASE_ARGS = ["--trainer.max_steps=30", "--trainer.val_check_interval=30", "--data.eval_per_domain=3",
             "--model.init_args.scheduler.init_args.total_steps=30"]
MODEL = "configs/models/tiny_aligned.yaml"


def _study(tmp: Path, runs=None, base_output=None) -> Study:
    runs = runs or [
        StudyRun("cyber_npo", [MODEL, "configs/unlearning/npo_cybersecurity.yaml"], RUN_ARGS),
        StudyRun("cyber_npo_retain", [MODEL, "configs/unlearning/npo_cybersecurity_retain.yaml"], RUN_ARGS),
    ]
    base = BaseStage(["configs/study/tiny/align.yaml"], BASE_ARGS, output=str(base_output or tmp / "base"), strict=False)
    return Study("test", runs, base=base, output_dir=str(tmp / "out"), args=["--trainer.enable_progress_bar=false"])


@pytest.mark.slow
def test_same_seed_same_table(in_repo, tmp_path, monkeypatch):
    """Twice the same study: one run after the other, then two at once in worker processes (each with
    one torch thread, as here, so the kernels match): the same numbers."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # two workers get one thread each on any machine
    tables = []
    for k in range(2):
        study = _study(tmp_path / f"s{k}")
        study.workers = 1 + k
        try:
            report = run_study(study, study_fit)
        finally:
            torch.set_num_threads(threads)
        torch.set_num_threads(1)
        results = json.loads((report.parent / "results.json").read_text())
        tables.append([(r["name"], [(h["step"], h["refusal"], h["over_refusal"]) for h in r["evaluations"]])
                       for r in results["runs"]])
        text = report.read_text()
        assert "EMA table" in text and "Sample generations" in text and "Concept vectors: target cybersecurity" in text
        for png in ("bars_cybersecurity_npo.png", "curve_cyber_npo.png", "curve_cyber_npo_retain.png"):
            assert (report.parent / "figures" / png).is_file()
        for name, history in tables[-1]:
            assert history[0][0] == 0 and set(history[0][1]["rate"]) == set(DOMAINS)
        # both runs start from the aligned base on the same prompts: the baseline is measured once, by
        # the first run, or (workers > 1) before the parallel runs, on all cores
        assert len(list((report.parent / "baseline_cache").glob("evaluation-*.json"))) == 1
        assert ("baseline" in results["timings"]) == (study.workers > 1)
        assert tables[-1][0][1][0] == tables[-1][1][1][0]
    torch.set_num_threads(threads)
    assert tables[0] == tables[1]


def test_aligned_base_is_cached_until_its_config_changes(in_repo, tmp_path):
    import ema_lightning.study as study_module
    from ema_lightning.results import DomainRates, Evaluation

    study = _study(tmp_path)
    output = Path(study.base.output)
    output.mkdir(parents=True)
    key = study_module._hash_stage(study.base, study.args)
    full = DomainRates({d: 20 for d in DOMAINS}, {d: 20 for d in DOMAINS})
    none = DomainRates({d: 0 for d in DOMAINS}, {d: 20 for d in DOMAINS})
    evaluation = Evaluation("val", 30, 0, full, none)
    (output / "study_stage.json").write_text(json.dumps({"hash": key, "evaluations": [evaluation.to_dict()]}))
    base_dir, evaluations, verdict = study_module.build_base(study, lambda *a: pytest.fail("stage 1 must not run when cached"))
    assert base_dir == output and evaluations == [evaluation] and "meets its bounds" in verdict
    study.base.args = study.base.args + ["--trainer.max_steps=31"]
    assert study_module._hash_stage(study.base, study.args) != key


def test_alignment_bounds_are_checked_on_the_external_benign_prompts_too():
    """Over-refusal shows on real benign prompts: a base that passes on the built-in look-alikes but
    refuses the suite's benign prompts misses its bounds, with the advice for over-refusal; a domain
    without external benign prompts (a NaN rate) is no miss."""
    import ema_lightning.study as study_module
    from ema_lightning.results import DomainRates, Evaluation

    full = DomainRates({d: 20 for d in DOMAINS}, {d: 20 for d in DOMAINS})
    none = DomainRates({d: 0 for d in DOMAINS}, {d: 20 for d in DOMAINS})
    suite_benign = DomainRates({d: 16 if d == "safety" else 0 for d in DOMAINS},
                               {d: 20 if d in ("safety", "privacy") else 0 for d in DOMAINS})
    stage = BaseStage(config=[], min_refusal=0.8, max_over_refusal=0.2)
    passing = Evaluation("val", 30, 0, full, none, external_refusal=full, external_over_refusal=none)
    assert "on the built-in eval prompts and the external eval prompts" in study_module._check_alignment(stage, passing)
    failing = Evaluation("val", 30, 0, full, none, external_refusal=full, external_over_refusal=suite_benign)
    with pytest.raises(StudyError) as error:
        study_module._check_alignment(stage, failing)
    message = str(error.value)
    assert "over-refusal above 20% on the external eval prompts in {'safety': '80%'}" in message
    assert "built-in" not in message and "fewer steps" in message and "train longer" not in message
    stage.strict = False
    assert study_module._check_alignment(stage, failing).startswith("Warning: the aligned base misses its bounds")


@pytest.mark.parametrize(
    "run, match",
    [
        (StudyRun("bad name!", [MODEL, "configs/unlearning/npo_safety.yaml"]), "not usable as a folder name"),
        (StudyRun("x", [MODEL, "configs/unlearning/npo_safety.yaml"], ["--data.target_domain=finance"]), "finance"),
        (StudyRun("x", [MODEL, "configs/unlearning/missing.yaml"]), "does not exist"),
        (StudyRun("x", [MODEL, "configs/unlearning/npo_safety.yaml"], ["--data.eval=[{path: nowhere.jsonl}]"]), "nowhere.jsonl"),
        (StudyRun("x", [MODEL]), "target_domain is not set"),
    ],
)
def test_study_config_errors_are_caught_before_training(in_repo, tmp_path, monkeypatch, run, match):
    import ema_lightning.modules.base as base

    monkeypatch.setattr(base, "load_model", lambda *a, **k: pytest.fail("no model may load while checking"))
    with pytest.raises(StudyError, match=match):
        check_study(_study(tmp_path, runs=[run]), study_fit)


def test_duplicate_run_names_are_refused(in_repo, tmp_path):
    run = StudyRun("same", [MODEL, "configs/unlearning/npo_safety.yaml"])
    with pytest.raises(StudyError, match="duplicate"):
        check_study(_study(tmp_path, runs=[run, run]), study_fit)


def test_check_study_reads_target_method_and_containment(in_repo, tmp_path):
    facts = check_study(_study(tmp_path, runs=[
        StudyRun("a", [MODEL, "configs/unlearning/compliance_safety_retain.yaml"]),
        StudyRun("b", [MODEL, "configs/unlearning/npo_cybersecurity.yaml"]),
    ]), study_fit)
    assert [(f.target, f.method, f.contained) for f in facts] == [("safety", "compliance", True),
                                                                  ("cybersecurity", "npo", False)]


def test_a_run_with_its_own_seeds_is_fitted_with_them_and_the_report_says_so(tmp_path, monkeypatch):
    """`StudyRun.seeds` in place of the study's: the costlier run once, the others three times; no training
    (a fit that returns hand-built evaluations)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "report"))
    from report_builders import evaluation

    from ema_lightning.study import FitOutcome

    config = tmp_path / "run.yaml"
    config.write_text("{}\n")
    fitted = []

    def fit(request, run):
        seed = next((int(a.split("=")[1]) for a in request.args if a.startswith("--seed_everything=")), 7)
        method = "rmu" if request.name.startswith("rmu") else "npo"
        evaluations = ()
        if run:
            fitted.append((request.name, seed))
            evaluations = (evaluation("baseline", 0, utility_nll=2.0),
                           evaluation("val", 4, refusal={"cybersecurity": 0.0}, ema_score=0.0, utility_nll=2.5))
        return FitOutcome("cybersecurity", method, method == "rmu", seed, str(tmp_path / request.name), evaluations)

    study = Study("seeds", [StudyRun("npo", [str(config)]), StudyRun("rmu", [str(config)], seeds=[4])],
                  output_dir=str(tmp_path / "out"), seeds=[0, 1, 2], reuse_baseline=False)
    report = run_study(study, fit).read_text()
    assert fitted == [("npo_seed0", 0), ("npo_seed1", 1), ("npo_seed2", 2), ("rmu_seed4", 4)]
    assert "Fewer seeds than the other runs (3): `rmu` (1 seed)" in report
    assert "| Cybersecurity | rmu (`rmu`) | yes | 1 | 0% [0-16] |" in report
    assert StudyRun("x", []).seeds_in(Study("s", [], seeds=[])) == [None]  # no seeds anywhere: once, the config's
    assert StudyRun("x", [], seeds=[]).seeds_in(Study("s", [], seeds=[1, 2])) == [None]


def test_study_runs_read_their_seeds_from_the_yaml(tmp_path):
    from ema_lightning.study import parse_study

    path = tmp_path / "study.yaml"
    path.write_text("name: s\nseeds: [0, 1]\nruns:\n  - {name: a, config: [a.yaml]}\n"
                    "  - {name: b, config: [b.yaml], seeds: [3], args: [--model.init_args.rmu_layer=2]}\n")
    study = parse_study(["--config", str(path)])
    assert [r.seeds_in(study) for r in study.runs] == [[0, 1], [3]]
    assert study.runs[1].args == ["--model.init_args.rmu_layer=2"]
