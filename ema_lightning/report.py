"""The study report: Markdown with the EMA table, refusal curves, bar charts and sample generations.

Figures are PNG files written beside the Markdown file and referenced by relative path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ema_lightning.domains import DISPLAY_NAMES, DOMAINS  # noqa: E402


@dataclass
class RunResult:
    """What one training run of a study measured."""

    name: str
    target: Optional[str]
    method: str
    contained: bool
    log_dir: str
    history: list[dict[str, Any]]
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> Optional[dict[str, Any]]:
        return next((h for h in self.history if h["stage"] == "baseline"), None)

    @property
    def final(self) -> Optional[dict[str, Any]]:
        evaluated = [h for h in self.history if h["stage"] != "baseline"]
        return evaluated[-1] if evaluated else None


def pct(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.0f}%"


def _rates(entry: Optional[dict[str, Any]], key: str = "refusal") -> dict[str, float]:
    return dict(entry[key]) if entry and key in entry else {d: float("nan") for d in DOMAINS}


def ema_tables(results: list[RunResult], key: str = "refusal") -> str:
    """One table per (target, method): refusal per domain at base, unlearned, contained.

    `key` picks the eval set: "refusal" (built-in held-out prompts) or "external_refusal"."""
    lines: list[str] = []
    for target, method in sorted({(r.target, r.method) for r in results}, key=str):
        unlearned = next((r for r in results if (r.target, r.method) == (target, method) and not r.contained), None)
        contained = next((r for r in results if (r.target, r.method) == (target, method) and r.contained), None)
        any_run = unlearned or contained
        base = _rates(any_run.baseline, key)
        cols = [("base", base)]
        if unlearned:
            cols.append((f"unlearned (`{unlearned.name}`)", _rates(unlearned.final, key)))
        if contained:
            cols.append((f"contained (`{contained.name}`)", _rates(contained.final, key)))
        lines.append(f"### Target {DISPLAY_NAMES.get(target, target)}, {method}\n")
        lines.append("| domain | " + " | ".join(c for c, _ in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for d in DOMAINS:
            mark = " (target)" if d == target else ""
            lines.append(f"| {DISPLAY_NAMES[d]}{mark} | " + " | ".join(pct(r.get(d)) for _, r in cols) + " |")
        if key != "refusal":
            lines.append("")
            continue
        for label, run in (("unlearned", unlearned), ("contained", contained)):
            if run and run.final and run.final.get("ema_score") is not None:
                lines.append(f"\nEMA score ({label}): {run.final['ema_score']:.3f} (mean refusal drop over the six non-target domains)")
        over = [(c, r) for c, r in (("base", _rates(any_run.baseline, "over_refusal")),
                                    ("unlearned", _rates(unlearned.final, "over_refusal") if unlearned else None),
                                    ("contained", _rates(contained.final, "over_refusal") if contained else None)) if r]
        mean_over = ", ".join(f"{c} {pct(_nanmean(r.values()))}" for c, r in over)
        lines.append(f"\nOver-refusal on benign look-alikes (mean over domains): {mean_over}\n")
    return "\n".join(lines)


def _nanmean(values) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def plot_refusal_curves(result: RunResult, path: Path) -> Path:
    """Refusal per domain over training steps (baseline at step 0)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    points = sorted(((h["step"], h) for h in result.history), key=lambda p: p[0])
    for d in DOMAINS:
        style = "-" if d != result.target else "--"
        ax.plot([s for s, _ in points], [h["refusal"][d] for _, h in points], style, marker="o", ms=3,
                lw=2.2 if d == result.target else 1.3, label=DISPLAY_NAMES[d])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("training step")
    ax.set_ylabel("refusal rate (harmful prompts)")
    ax.set_title(result.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_bars(title: str, columns: dict[str, dict[str, float]], path: Path, target: Optional[str] = None) -> Path:
    """Grouped bars: refusal per domain for each column (base / unlearned / contained)."""
    fig, ax = plt.subplots(figsize=(7.2, 3.4), dpi=110)
    width = 0.8 / max(len(columns), 1)
    for k, (label, rates) in enumerate(columns.items()):
        xs = [i + (k - (len(columns) - 1) / 2) * width for i in range(len(DOMAINS))]
        ax.bar(xs, [rates.get(d, float("nan")) for d in DOMAINS], width, label=label)
    ax.set_xticks(range(len(DOMAINS)))
    ax.set_xticklabels([DISPLAY_NAMES[d] + ("*" if d == target else "") for d in DOMAINS], rotation=20, fontsize=8)
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("refusal rate")
    ax.set_title(title + ("  (* = target)" if target else ""))
    ax.legend(fontsize=8, ncol=len(columns), loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def samples_section(results: list[RunResult], per_domain: int = 1) -> str:
    """Generations per domain at baseline and after each run, so the judge can be checked by eye."""
    lines = ["| run | domain | harmful | prompt | response | judged |", "|---|---|---|---|---|---|"]
    first = results[0] if results else None
    sources = [("base", first.baseline)] if first and first.baseline else []
    sources += [(r.name, r.final) for r in results if r.final]
    for name, entry in sources:
        seen: dict[tuple[str, bool], int] = {}
        for s in entry.get("samples", []):
            key = (s["domain"], s["harmful"])
            if seen.get(key, 0) >= per_domain:
                continue
            seen[key] = seen.get(key, 0) + 1
            lines.append(
                f"| {name} | {s['domain']} | {'yes' if s['harmful'] else 'no'} | {_cell(s['prompt'])} | "
                f"{_cell(s['response'])} | {'refused' if s['refused'] else 'complied'} |"
            )
    return "\n".join(lines)


def _cell(text: str, limit: int = 140) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_report(
    path: Path,
    title: str,
    results: list[RunResult],
    preamble: str = "",
    sections: Optional[list[str]] = None,
) -> Path:
    """Write the Markdown report and its PNG figures (in `<report dir>/figures`)."""
    path = Path(path)
    figures = path.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n", preamble, "## EMA table: refusal on held-out harmful prompts\n", ema_tables(results)]
    if any(r.baseline and "external_refusal" in r.baseline for r in results):
        parts += ["\n## Refusal on external prompts (public benchmarks mapped to the seven domains)\n",
                  ema_tables(results, "external_refusal")]
    parts.append("\n## Refusal per domain\n")
    for target, method in sorted({(r.target, r.method) for r in results}, key=str):
        group = [r for r in results if (r.target, r.method) == (target, method)]
        columns = {"base": _rates(group[0].baseline)}
        for r in group:
            columns["contained" if r.contained else "unlearned"] = _rates(r.final)
        png = plot_bars(f"{DISPLAY_NAMES.get(target, target)}, {method}", columns,
                        figures / f"bars_{target}_{method}.png", target)
        parts.append(f"![{target} {method}](figures/{png.name})\n")
    parts.append("\n## Refusal curves over training\n")
    for r in results:
        png = plot_refusal_curves(r, figures / f"curve_{r.name}.png")
        parts.append(f"![{r.name}](figures/{png.name})\n")
    parts.extend(sections or [])
    parts.append("\n## Sample generations\n")
    parts.append(samples_section(results))
    path.write_text("\n".join(parts) + "\n")
    return path
