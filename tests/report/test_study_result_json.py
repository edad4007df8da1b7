"""`StudyResult` survives its JSON file: every field, optional ones included, comes back equal."""

from report_builders import domain_rates, evaluation, run, study

from ema_lightning.domains import DOMAINS
from ema_lightning.results import Evaluation, Sample, StudyResult


def test_study_result_json_round_trip(tmp_path):
    full = Evaluation("val", 10, 2, domain_rates({"bias": 0.35}), domain_rates(0.05),
                      {d: k - 2.5 for k, d in enumerate(DOMAINS)}, domain_rates(0.8), domain_rates(0.1),
                      (Sample("bias", True, "prompt | with pipe", "No.", True),), 0.42, utility_nll=2.75)
    runs = (run("unlearned_run", evaluations=(evaluation("baseline", 0), full), log_dir="logs/u", wall_s=12.5, concept_s=1.5),
            run("aligned", target=None, method="alignment", contained=True, evaluations=(evaluation("test", 3),)))
    original = study(runs, (evaluation("baseline", 0, refusal=0.5), evaluation("val", 30, external=0.9)),
                     "The aligned base meets its bounds.", {"aligned base": 5.0, "unlearned_run": 12.5, "total": 20.0})
    assert StudyResult.from_dict(original.to_dict()) == original
    assert StudyResult.load(original.save(tmp_path / "results.json")) == original
    assert list(StudyResult.load(tmp_path / "results.json").timings) == ["aligned base", "unlearned_run", "total"]
    assert StudyResult.load(tmp_path / "results.json").runs[0].final.utility_nll == 2.75


def test_an_evaluation_written_before_the_utility_measure_loads_without_it():
    data = evaluation("val", 10).to_dict()
    del data["utility_nll"]
    loaded = Evaluation.from_dict(data)
    assert loaded.utility_nll is None and "val/utility/nll" not in loaded.metrics("val")
    assert Evaluation.from_dict({**data, "utility_nll": 1.5}).metrics("val")["val/utility/nll"] == 1.5
