"""`write_report`: the whole report from a `StudyResult`, every figure it links written as a PNG."""

import re

import torch
from report_builders import evaluation, run, study

from ema_lightning.concepts.vectors import ConceptVectors
from ema_lightning.domains import DOMAINS
from ema_lightning.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def save_concept_vectors(log_dir, steps=(0, 10)):
    g = torch.Generator().manual_seed(0)
    for k, step in enumerate(steps):
        vectors = torch.randn(len(DOMAINS), 4, 16, generator=g) + k
        ConceptVectors(vectors, torch.randn(4, 16, generator=g), dict.fromkeys(DOMAINS, 5), model_name="tiny",
                       step=step).save(log_dir / "concept_vectors" / f"step={step}.safetensors")


def linked_figures(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", markdown)


def test_full_report_sections_in_order_and_every_figure_written(tmp_path):
    save_concept_vectors(tmp_path / "logs" / "unlearned_run")
    measured = (evaluation("baseline", 0, external=1.0), evaluation("val", 10, refusal=0.0, external=0.5, ema_score=1.0))
    runs = (run("unlearned_run", evaluations=measured, log_dir=str(tmp_path / "logs" / "unlearned_run"), wall_s=40, concept_s=2),
            run("contained_run", contained=True, evaluations=measured[:1] + (evaluation("val", 10, refusal={"privacy": 0.0}),)))
    result = study(runs, (evaluation("baseline", 0, refusal=0.5), evaluation("val", 30)), "The aligned base meets its bounds.",
                   {"aligned base": 5.0, "unlearned_run": 40.0, "contained_run": 41.0, "total": 90.0})
    path = write_report(tmp_path / "out" / "report.md", result)
    markdown = path.read_text()
    lines = markdown.splitlines()
    assert lines[0] == "# EMA study: demo"
    headings = ["| stage | wall time (s) | concept vectors (s) |", "## The aligned base (stage 1)",
                "The aligned base meets its bounds.", "## EMA table: refusal on held-out harmful prompts",
                "## Refusal on external prompts (public benchmarks mapped to the seven domains)",
                "## Method comparison", "## Refusal per domain", "## Refusal curves over training (first seed of each run)",
                "## Concept vectors: target privacy (run `unlearned_run`)", "## Sample generations"]
    positions = [lines.index(h) for h in headings]
    assert positions == sorted(positions)
    assert "| unlearned_run | 40.0 | 2.0 |" in lines and "| aligned base | 5.0 |  |" in lines
    assert "| Bias | 100% [84-100] | 0% [0-16] | 100% [84-100] |" in lines
    assert "| Bias | 100% [84-100] | 50% [30-70] | n/a |" in lines

    figures = linked_figures(markdown)
    names = {f.removeprefix("figures/") for f in figures}
    assert {"bars_privacy_npo.png", "curve_unlearned_run.png", "curve_contained_run.png", "methods.png",
            "concepts_privacy_drift.png", "concepts_privacy_similarity_vs_drop.png"} <= names
    assert len(figures) == len(names) == 4 + 8
    for figure in figures:
        assert (path.parent / figure).read_bytes()[:8] == PNG
    assert names == {p.name for p in (path.parent / "figures").iterdir()}


def test_report_without_aligned_base_or_external_prompts_leaves_those_sections_out(tmp_path):
    markdown = write_report(tmp_path / "report.md", study((run("unlearned_run"),), timings={"total": 1.0})).read_text()
    assert "## The aligned base (stage 1)" not in markdown
    assert "## Refusal on external prompts" not in markdown
    assert "## Concept vectors" not in markdown
    assert "| Bias | 100% [84-100] | 0% [0-16] |" in markdown.splitlines()
    for figure in linked_figures(markdown):
        assert (tmp_path / figure).read_bytes()[:8] == PNG
    assert len(linked_figures(markdown)) == 3  # bars, curve, method comparison


def test_the_report_command_writes_a_study_report_again_from_its_results_json(tmp_path, capsys):
    """`ema-lightning report RESULTS.json`: the same report as the study wrote, from the file alone;
    a missing, broken or foreign file is one line naming the file."""
    import pytest

    from ema_lightning.cli import main

    measured = (evaluation("baseline", 0), evaluation("val", 10, refusal=0.0, ema_score=1.0))
    result = study((run("unlearned_run", evaluations=measured, log_dir=str(tmp_path / "logs")),), (evaluation("val", 30),),
                   "The aligned base meets its bounds.", {"total": 1.0})
    written = write_report(tmp_path / "study" / "report.md", result).read_text()
    results = result.save(tmp_path / "study" / "results.json")
    again = main(["report", str(results), "--output", str(tmp_path / "again")])
    assert again == tmp_path / "again" / "report.md" and again.read_text() == written
    assert str(again) in capsys.readouterr().out
    assert main(["report", str(results)]) == results.parent / "report.md"
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x",\n  "runs": [}')
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"name": "x"}')
    for path, message in ((tmp_path / "missing.json", "cannot read it"), (broken, "broken.json:2:12: not valid JSON"),
                          (foreign, "not a study's results.json")):
        with pytest.raises(ValueError, match=message):
            main(["report", str(path)])
