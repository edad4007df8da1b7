"""`write_report`: the whole study report, Markdown with its PNG figures in `<report dir>/figures`."""

from __future__ import annotations

from pathlib import Path

from ema_lightning.domains import DISPLAY_NAMES
from ema_lightning.report.claims import claims_section
from ema_lightning.report.figures import plot_bars, plot_refusal_curves
from ema_lightning.report.methods import methods_section
from ema_lightning.report.relearning import relearning_section
from ema_lightning.report.audit import audit_section, susceptibility_section
from ema_lightning.report.tables import (
    base_section,
    ema_tables,
    first_seeds,
    group_runs,
    harmful_refusal,
    pooled,
    rates,
    run_groups,
    samples_table,
    timings_table,
)
from ema_lightning.results import StudyResult

PREAMBLE = (
    "Refusal rates are judged on held-out prompts of all seven domains (greedy generation);\n"
    "*base* is the aligned model before unlearning, *unlearned* is refusal unlearning on the\n"
    "target domain alone, *contained* adds the retain cross-entropy on the other domains.\n"
)


def write_report(path: Path, study: StudyResult) -> Path:
    """Write the Markdown report of a study to `path` and its figures beside it; returns `path`.

    Sections: preamble and timings, the aligned base (stage 1), EMA tables on the built-in and (when
    measured) the external prompts, the method comparison (table and scatter), bars per (target,
    method), refusal curves per run, the relearning check, concept vectors per target, sample
    generations, the paper's claims."""
    # Concept sections load torch; imported here so the tables and figures alone stay light.
    from ema_lightning.report.concepts import concept_sections

    path = Path(path)
    figures = path.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs = list(study.runs)
    preamble = PREAMBLE + "\n" + timings_table(study.timings, runs) + "\n"
    parts = [f"# EMA study: {study.name}\n", preamble + base_section(study.base_evaluations, study.base_verdict),
             "## EMA table: refusal on held-out harmful prompts\n",
             "Each cell: the refusal rate and its 95% Wilson interval over the domain's prompts; a change whose "
             "interval overlaps the base's is within noise, and the lines under each table say which are.\n",
             ema_tables(runs)]
    if any(r.baseline is not None and r.baseline.has_external for r in runs):
        parts += ["\n## Refusal on external prompts (public benchmarks mapped to the seven domains)\n",
                  ema_tables(runs, external=True)]
    parts.append(methods_section(runs, figures))
    parts.append("\n## Refusal per domain\n")
    for target, method in run_groups(runs):
        unlearned, contained = group_runs(runs, target, method)
        columns = {"base": harmful_refusal((unlearned or contained)[0].baseline)}
        for kind, group in (("unlearned", unlearned), ("contained", contained)):
            if group:
                columns[kind] = rates(pooled([r.final for r in group]))
        png = plot_bars(f"{DISPLAY_NAMES.get(target, target)}, {method}", columns,
                        figures / f"bars_{target}_{method}.png", target)
        parts.append(f"![{target} {method}](figures/{png.name})\n")
    parts.append("\n## Refusal curves over training (first seed of each run)\n")
    for r in first_seeds(runs):
        png = plot_refusal_curves(r, figures / f"curve_{r.group}.png")
        parts.append(f"![{r.group}](figures/{png.name})\n")
    parts.append(relearning_section(study.relearning, runs))
    parts.append(susceptibility_section(runs))
    parts.extend(concept_sections(runs, path.parent))
    parts.append(audit_section(runs, study.judge_accuracy))
    parts.append("\n## Sample generations\n")
    parts.append(samples_table(runs))
    parts.append(claims_section(runs))
    path.write_text("\n".join(parts) + "\n")
    return path
