"""The report's Markdown tables (EMA tables, base, timings, samples, judge audit), line by line, on hand-built results."""

import math

from report_builders import evaluation, run

from ema_lightning.report.tables import base_section, ema_tables, pct, samples_table, timings_table
from ema_lightning.results import Sample


def test_pct_rounds_to_whole_percent_and_marks_missing_values():
    assert [pct(1.0), pct(0.0), pct(0.95), pct(0.5)] == ["100%", "0%", "95%", "50%"]
    assert pct(None) == "n/a" and pct(math.nan) == "n/a"


def unlearned_and_contained():
    unlearned = run("unlearned_run", evaluations=(
        evaluation("baseline", 0, over_refusal=0.0),
        evaluation("val", 10, refusal=0.0, over_refusal=0.1, ema_score=1.0)))
    contained = run("contained_run", contained=True, evaluations=(
        evaluation("baseline", 0),
        evaluation("val", 10, refusal={"bias": 0.95, "privacy": 0.1}, over_refusal=0.05, ema_score=0.0125)))
    return unlearned, contained


def test_ema_table_lines():
    lines = ema_tables(unlearned_and_contained()).splitlines()
    assert lines[:3] == ["### Target Privacy, npo", "",
                         "| domain | base | unlearned (`unlearned_run`) | contained (`contained_run`) |"]
    assert lines[3] == "|---|---:|---:|---:|"
    # 20 prompts per domain: 95% Wilson intervals of 20/20, 0/20, 19/20, 2/20
    assert "| Bias | 100% [84-100] | 0% [0-16] | 95% [76-99] |" in lines
    assert "| Privacy (target) | 100% [84-100] | 0% [0-16] | 10% [3-30] |" in lines
    assert "| Safety | 100% [84-100] | 0% [0-16] | 100% [84-100] |" in lines
    # the contained run stays within noise of the base outside the target; the unlearned run nowhere
    assert ("Within noise of the base (contained; the 95% intervals overlap): Cybersecurity, Safety, Toxicity, "
            "Bias, Sensitive Content, Medical/Legal.") in lines
    assert not any(line.startswith("Within noise of the base (unlearned") for line in lines)
    suffix = "(mean refusal drop over the six non-target domains; 95% bootstrap interval over prompts)"
    # 20/20 -> 0/20 everywhere: no spread; the contained run: one domain redrawn around 19/20
    assert f"EMA score (unlearned): 1.000 [1.000, 1.000] {suffix}" in lines
    contained = next(line for line in lines if line.startswith("EMA score (contained): 0.013 ["))
    low, high = (float(v) for v in contained.split("[")[1].split("]")[0].split(", "))
    assert 0.0 <= low <= 0.0125 <= high <= 0.05 and contained.endswith(suffix)
    # over-refusal per domain (20 benign prompts each) and over all 140 benign prompts
    assert "| domain | base: look-alikes | unlearned: look-alikes | contained: look-alikes |" in lines
    assert "| Bias | 0% [0-16] | 10% [3-30] | 5% [1-24] |" in lines
    assert "| all domains | 0% [0-3] | 10% [6-16] | 5% [2-10] |" in lines


def test_one_table_per_target_and_method_in_sorted_order():
    runs = [run("b", target="safety", method="npo"), run("a", target="bias", method="npo"),
            run("c", target="bias", method="gradient_ascent", contained=True)]
    headings = [line for line in ema_tables(runs).splitlines() if line.startswith("###")]
    assert headings == ["### Target Bias, gradient_ascent", "### Target Bias, npo", "### Target Safety, npo"]
    assert "| domain | base | contained (`c`) |" in ema_tables(runs[2:]).splitlines()


def test_external_table_scores_from_counts_and_shows_missing_runs_as_not_measured():
    measured = run("u", evaluations=(evaluation("baseline", 0, external=1.0), evaluation("val", 10, external={"bias": 0.4})))
    lines = ema_tables([measured], external=True).splitlines()
    assert "| Bias | 100% [84-100] | 40% [22-61] |" in lines
    # the EMA score on the external prompts, from their counts: bias 100% -> 40%, the other five stay
    ema = next(line for line in lines if line.startswith("EMA score (unlearned): 0.100 ["))
    low, high = (float(v) for v in ema.split("[")[1].split("]")[0].split(", "))
    assert low < 0.1 < high and "refusal drop" in ema
    # over-refusal on the external benign prompts first, then on the built-in look-alikes
    assert "| domain | base: public benign | base: look-alikes | unlearned: public benign | unlearned: look-alikes |" in lines
    assert "| Bias | 0% [0-16] | 0% [0-16] | 0% [0-16] | 0% [0-16] |" in lines
    unmeasured = ema_tables([run("u")], external=True).splitlines()
    assert "| Bias | n/a | n/a |" in unmeasured


def test_a_run_without_final_evaluation_shows_not_measured():
    lines = ema_tables([run("u", evaluations=(evaluation("baseline", 0),))]).splitlines()
    assert "| Bias | 100% [84-100] | n/a |" in lines
    assert "| all domains | 0% [0-3] | n/a |" in lines


def test_base_section_as_shipped_and_aligned_with_verdict():
    shipped = evaluation("baseline", 0, refusal={"bias": 0.5}, over_refusal=0.1)
    middle = evaluation("val", 10, refusal=0.7)
    aligned = evaluation("val", 30, refusal=1.0, over_refusal=0.0)
    text = base_section((shipped, middle, aligned), "The aligned base meets its bounds.")
    lines = text.splitlines()
    assert "## The aligned base (stage 1)" in lines
    assert ("| domain | as shipped: refusal | as shipped: over-refusal | aligned (step 30): refusal | "
            "aligned (step 30): over-refusal |") in lines
    assert "|---|---:|---:|---:|---:|" in lines
    assert "| bias | 50% [30-70] | 10% [3-30] | 100% [84-100] | 0% [0-16] |" in lines
    assert "| privacy | 100% [84-100] | 10% [3-30] | 100% [84-100] | 0% [0-16] |" in lines
    assert lines[-1] == "The aligned base meets its bounds." and text.endswith("bounds.\n")
    assert "On the external prompts" not in text


def test_base_section_without_shipped_measurement_keeps_the_last_evaluation_and_external():
    text = base_section((evaluation("val", 10), evaluation("val", 20), evaluation("val", 30, external={"bias": 0.8})))
    lines = text.splitlines()
    assert "| domain | aligned (step 30): refusal | aligned (step 30): over-refusal |" in lines
    assert "On the external prompts (harmful: refusal and degenerate; benign: over-refusal):" in lines
    assert "| domain | aligned (step 30): refusal | aligned (step 30): over-refusal |" in lines
    assert "| bias | 80% [58-92] | 0% [0-16] |" in lines


def test_base_section_external_column_not_measured_and_empty_without_stage_one():
    text = base_section((evaluation("baseline", 0), evaluation("val", 30, external=0.9)), "ok")
    assert "| cybersecurity | n/a | n/a | 90% [70-97] | 0% [0-16] |" in text.splitlines()
    assert base_section(()) == ""


def test_timings_table_lists_stages_in_order_with_concept_seconds_for_runs():
    runs = [run("unlearned_run", wall_s=40.0, concept_s=2.5)]
    lines = timings_table({"aligned base": 12.34, "unlearned_run": 40.0, "total": 60.06}, runs).splitlines()
    assert lines == ["| stage | wall time (s) | concept vectors (s) |", "|---|---:|---:|",
                     "| aligned base | 12.3 |  |", "| unlearned_run | 40.0 | 2.5 |", "| total | 60.1 |  |"]


def test_samples_table_one_per_domain_and_kind_cells_escaped_and_cut():
    samples = (Sample("bias", True, "a | b\n c", "no", True), Sample("bias", True, "second", "kept out", False),
               Sample("bias", False, "x" * 200, "sure", False))
    runs = [run("u", evaluations=(evaluation("baseline", 0, samples=samples), evaluation("val", 10, samples=samples[2:])))]
    lines = samples_table(runs).splitlines()
    assert lines[:2] == ["| run | domain | harmful | prompt | response | judged |", "|---|---|---|---|---|---|"]
    assert lines[2] == "| base | bias | yes | a \\| b c | no | refused |"
    assert lines[3] == f"| base | bias | no | {'x' * 139}… | sure | complied |"
    assert lines[4].startswith("| u | bias | no | ") and len(lines) == 5


def _seeded(group, refusals, contained=False, degenerate=0.0):
    """One study run (`group`) with one seed per final refusal rate of the bias domain."""
    from dataclasses import replace

    from report_builders import domain_rates

    runs = []
    for seed, rate in enumerate(refusals):
        final = replace(evaluation("val", 10, refusal={"bias": rate}, ema_score=0.1),
                        degenerate=domain_rates(degenerate), complied=domain_rates(1 - degenerate))
        base = replace(evaluation("baseline", 0), degenerate=domain_rates(0.0), complied=domain_rates(0.0))
        r = run(f"{group}_seed{seed}", contained=contained, evaluations=(base, final))
        runs.append(replace(r, group=group, seed=seed))
    return runs


def test_seeds_pool_into_one_column_with_their_spread_and_a_degenerate_column():
    runs = _seeded("npo", [0.0, 0.5, 1.0], degenerate=0.5)
    lines = ema_tables(runs).splitlines()
    assert "| domain | base | degenerate | unlearned (`npo`, 3 seeds) | degenerate |" in lines
    # bias: 0 + 10 + 20 of 60 refused (50%), the seeds' rates 0, 0.5, 1 (sd 0.5); 30/60 degenerate
    assert "| Bias | 100% [84-100] | 0% [0-16] | 50% ±50 [38-62] | 50% ±0 [38-62] |" in lines
    ema = next(line for line in lines if line.startswith("EMA score (unlearned)"))
    assert "rise of coherent compliance" in ema and "over prompts and seeds" in ema


def test_audit_section_reports_kappa_per_run_and_accuracy_per_labelled_set():
    from dataclasses import replace

    from report_builders import domain_rates

    from ema_lightning.report.audit import audit_section
    from ema_lightning.results import Agreement

    final = replace(evaluation("val", 10, refusal=0.5), degenerate=domain_rates(0.0),
                    judges={"substring": domain_rates(0.25)}, agreement={"substring": Agreement(20, 5, 10, 65)})
    text = audit_section([run("npo", evaluations=(evaluation("baseline", 0), final))],
                         {"labels.jsonl": {"main": 0.9, "substring": 0.8}})
    assert "| `npo` | 100 | 0.63 | 50% [42-58] | 25% [19-33] | 0% [0-3] | n/a |" in text  # kappa 0.625
    assert "| `labels.jsonl` | 0.900 | 0.800 |" in text
