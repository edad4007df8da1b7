"""The concept-vector section: its Markdown and figures on synthetic concept vectors and files."""

import math

import pytest
import torch
from report_builders import evaluation, run
from tiny_assets import planted_activations

from ema_lightning.concepts.vectors import ConceptVectors, concept_vectors, refusal_direction
from ema_lightning.domains import DOMAINS
from ema_lightning.report.concepts import concept_section, concept_sections, susceptibility_of


def base_and_after(layers: int = 7):
    acts, neutral = planted_activations(layers=layers)
    base = ConceptVectors(concept_vectors(acts, neutral), refusal_direction(acts["bias"], neutral), {d: 40 for d in DOMAINS})
    shifted = {d: a + (0.5 * torch.randn_like(a) if d == "privacy" else 0) for d, a in acts.items()}
    after = ConceptVectors(concept_vectors(shifted, neutral), base.refusal_direction, base.counts, step=50)
    return base, after


def test_concept_section_writes_its_figures(tmp_path):
    # Was tests/concepts/test_concepts.py::test_report_section_writes_its_figures (concept_report_section).
    base, after = base_and_after()
    drop = {"cybersecurity": 0.1, "safety": 0.05, "toxicity": 0.0, "sensitive_content": 0.2, "medical_legal": 0.1, "privacy": 0.6}
    report_dir = tmp_path / "report"
    markdown = concept_section(base, after, drop, "bias", report_dir / "figures", relative_to=report_dir)
    pngs = sorted(p.name for p in (report_dir / "figures").glob("*.png"))
    assert len(pngs) == 8, pngs
    for name in pngs:
        assert f"(figures/{name})" in markdown
        assert (report_dir / "figures" / name).stat().st_size > 1000
    assert "| Spearman |" in markdown and "| Pearson |" in markdown and "Unlearning Bias" in markdown.title()
    assert "| Privacy |" in markdown and "| Bias |" not in markdown  # the target is left out of the table
    assert "Early layers: layers 1-2" in markdown


def test_concept_section_rejects_layers_outside_the_model(tmp_path):
    base, after = base_and_after(layers=4)
    with pytest.raises(ValueError, match=r"layers \[9\] outside 0..3"):
        concept_section(base, after, dict.fromkeys(DOMAINS, 0.0), "bias", tmp_path, layers=[1, 9])


def test_susceptibility_prefers_the_refusal_curve_then_scores_then_rates():
    curve = run("u", evaluations=(evaluation("baseline", 0), evaluation("val", 10, refusal={"bias": 0.5}),
                                  evaluation("val", 20, refusal=0.0)))
    drop, measure = susceptibility_of([curve])
    # bias: 1 -> 0.5 -> 0, area (7.5 + 2.5) / 20; the others 1 -> 1 -> 0: (10 + 5) / 20
    assert drop["bias"] == pytest.approx(0.5) and drop["safety"] == pytest.approx(0.25)
    assert measure.startswith("share of refusal lost")
    scored = run("u", evaluations=(evaluation("baseline", 0, refusal_score=dict.fromkeys(DOMAINS, 3.0)),
                                   evaluation("val", 10, refusal=0.5, refusal_score=dict.fromkeys(DOMAINS, -1.0))))
    drop, measure = susceptibility_of([scored])
    assert drop == dict.fromkeys(DOMAINS, 4.0) and measure.startswith("drop in mean refusal log-odds")
    drop, measure = susceptibility_of([run("u", evaluations=(evaluation("baseline", 0), evaluation("val", 10, refusal=0.25)))])
    assert drop == dict.fromkeys(DOMAINS, 0.75) and measure == "drop in refusal rate"
    assert not math.isnan(sum(drop.values()))


def test_no_section_without_two_concept_vector_files(tmp_path):
    base, _ = base_and_after(layers=4)
    base.save(tmp_path / "run" / "concept_vectors" / "step=0.safetensors")
    assert concept_sections([run("u", log_dir=str(tmp_path / "run"))], tmp_path / "report") == []
    assert concept_sections([run("u", target=None, method="alignment", log_dir=str(tmp_path / "run"))], tmp_path) == []


def test_susceptibility_falls_back_to_log_odds_when_every_rate_fell_alike():
    def scored(step, rate, scores):
        return evaluation("val" if step else "baseline", step, refusal=rate, refusal_score=scores)

    fast = dict.fromkeys(DOMAINS, 4.0) | {"bias": 0.0}
    curve = run("u", evaluations=(scored(0, 1.0, dict.fromkeys(DOMAINS, 4.0)), scored(10, 0.0, fast),
                                  scored(20, 0.0, dict.fromkeys(DOMAINS, -4.0))))
    drop, measure = susceptibility_of([curve])
    assert measure.startswith("share of refusal log-odds lost")
    # bias: 4 -> 0 -> -4, area (10 * 2 + 10 * -2) / (4 * 20) = 0; the others 4 -> 4 -> -4: 40 / 80
    assert drop["bias"] == pytest.approx(1.0) and drop["safety"] == pytest.approx(0.5)
