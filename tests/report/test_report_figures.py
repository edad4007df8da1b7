"""The report's figures: drawn on an Agg Figure without pyplot, one line or bar group per domain."""

import matplotlib.pyplot as plt
from report_builders import evaluation, run

from ema_lightning.domains import DOMAINS
from ema_lightning.report.figures import bars_figure, refusal_curves_figure


def test_refusal_curves_one_line_per_domain_in_step_order_target_dashed():
    before = plt.get_fignums()
    unlearned = run("u", target="bias", evaluations=(evaluation("val", 10, refusal=0.0), evaluation("baseline", 0)))
    ax = refusal_curves_figure(unlearned).axes[0]
    assert len(ax.lines) == len(DOMAINS)
    target = ax.lines[DOMAINS.index("bias")]
    assert target.get_linestyle() == "--" and ax.lines[0].get_linestyle() == "-"
    assert list(target.get_xdata()) == [0, 10] and list(target.get_ydata()) == [1.0, 0.0]
    assert ax.get_title() == "u"
    assert plt.get_fignums() == before  # no pyplot figure was opened


def test_bars_one_bar_per_domain_and_column_target_starred():
    columns = {"base": dict.fromkeys(DOMAINS, 1.0), "unlearned": dict.fromkeys(DOMAINS, 0.0)}
    ax = bars_figure("Bias, npo", columns, target="bias").axes[0]
    assert len(ax.patches) == 2 * len(DOMAINS)
    assert [t.get_text() for t in ax.get_xticklabels()][DOMAINS.index("bias")] == "Bias*"
    assert ax.get_title() == "Bias, npo  (* = target)"
