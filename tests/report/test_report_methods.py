"""The method comparison: one row per run (seeds pooled) with hand-computed cells, the runs with fewer
seeds named, and the target-vs-off-target scatter with one point per run and seed."""

from matplotlib.colors import to_rgba
from report_builders import evaluation, run

from ema_lightning.domains import DOMAINS
from ema_lightning.report.figures import methods_figure
from ema_lightning.report.methods import methods_section, share_cell, utility_cell

PNG = b"\x89PNG\r\n\x1a\n"
OTHERS = 0.5  # every non-target domain's refusal after NPO (the builders give the target, left out, 1.0)


def _runs():
    base = evaluation("baseline", 0, refusal=1.0, over_refusal=0.0, degenerate=0.0, utility_nll=2.0)
    npo = tuple(
        run(f"cyber_npo_seed{s}", target="cybersecurity", method="npo", seed=s, group="cyber_npo",
            evaluations=(base, evaluation("val", 48, refusal={"cybersecurity": 0.0, **{d: OTHERS for d in DOMAINS[1:]}},
                                          over_refusal=0.1, degenerate=0.25, utility_nll=2.5 + 0.1 * s, ema_score=0.25)))
        for s in range(3))
    rmu = run("cyber_rmu_seed0", target="cybersecurity", method="rmu", contained=True, group="cyber_rmu",
              evaluations=(base, evaluation("val", 48, refusal={"cybersecurity": 0.1}, degenerate=0.0, utility_nll=1.9,
                                            ema_score=0.0)))
    return npo + (rmu,)


def _row(markdown, start):
    return next(line for line in markdown.splitlines() if line.startswith(start))


def test_rows_pool_seeds_with_intervals_spread_and_utility_change(tmp_path):
    markdown = methods_section(_runs(), tmp_path / "figures")
    assert "## Method comparison" in markdown
    # target: 0 of 60 prompts (Wilson [0, 6%]); off-target: 180 of 360; over-refusal 2 of 20 per domain and seed;
    # degenerate: 5 of 20 harmful prompts per domain (the 0.25 of the builders); utility 2.5/2.6/2.7 vs 2.0
    npo = _row(markdown, "| Cybersecurity | npo (`cyber_npo`)")
    cells = [c.strip() for c in npo.strip("|").split("|")]
    assert cells[:6] == ["Cybersecurity", "npo (`cyber_npo`)", "no", "3", "0% ±0 [0-6]", "50% ±0 [45-55]"]
    assert cells[7:] == ["10% ±0 [7-13]", "25% ±0 [21-29]", "2.60 (+0.60 ±0.10)"]
    # EMA score: the mean of the seeds' scores, with the bootstrap interval of coherent compliance around it
    score, low, high = (float(v) for v in cells[6].replace("[", "").replace("]", "").replace(",", "").split())
    assert score == 0.25 and low < score < high
    rmu = _row(markdown, "| Cybersecurity | rmu (`cyber_rmu`)")
    assert rmu.startswith("| Cybersecurity | rmu (`cyber_rmu`) | yes | 1 | 10% [3-30] | 100% [97-100] | 0.000")
    assert rmu.endswith("| 0% [0-3] | 0% [0-3] | 1.90 (-0.10) |")
    base = _row(markdown, "| Cybersecurity | base")
    assert base == "| Cybersecurity | base |  |  | 100% [84-100] | 100% [97-100] | - | 0% [0-3] | 0% [0-3] | 2.00 |"
    lines = markdown.splitlines()
    assert lines.index(base) < lines.index(npo) < lines.index(rmu)  # base first, then methods in order
    assert "Fewer seeds than the other runs (3): `cyber_rmu` (1 seed)" in markdown
    assert "![method comparison](figures/methods.png)" in markdown
    assert (tmp_path / "figures" / "methods.png").read_bytes()[:8] == PNG


def test_cells_without_measurements_say_so():
    plain = evaluation("val", 48)  # no degenerate share, no utility measured
    assert share_cell([plain], "degenerate", ["bias"]) == "n/a"
    assert utility_cell([plain], [evaluation("baseline", 0)]) == "n/a"
    measured = evaluation("val", 48, utility_nll=3.0)
    assert utility_cell([measured], [evaluation("baseline", 0)]) == "3.00 (n/a)"  # baseline without it
    assert utility_cell([measured], None) == "3.00"
    assert methods_section([run("aligned", target=None, method="alignment")], ".") == ""


def test_every_run_and_seed_is_one_point_coloured_by_method_hollow_when_contained():
    runs = _runs()
    ax = methods_figure(runs).axes[0]
    points = ax.collections
    assert len(points) == len(runs) + 1  # one per run and seed, and the target's baseline star
    npo, rmu, star = points[0], points[3], points[-1]
    assert npo.get_offsets()[0][1] == OTHERS and npo.get_offsets()[0][0] < 0  # x = 0, nudged left of rmu
    assert rmu.get_offsets()[0][0] > 0.1 and tuple(rmu.get_offsets()[0]) != (0.1, 1.0)  # nudged right
    assert tuple(star.get_offsets()[0]) == (1.0, 1.0)
    assert to_rgba(npo.get_facecolor()[0]) == to_rgba("C0")
    assert len(rmu.get_facecolor()) == 0 or rmu.get_facecolor()[0][3] == 0  # contained: hollow
    assert to_rgba(rmu.get_edgecolor()[0]) == to_rgba("C1")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["npo", "rmu", "target Cybersecurity", "contained (retain loss)", "base"]
