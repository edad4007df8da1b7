"""The claims section: each of the paper's four claims supported, contradicted or within noise, and
undecided without the runs or files it needs, on hand-built results."""

import math
from dataclasses import replace

import torch
from report_builders import domain_rates, evaluation, run

from ema_lightning.concepts.vectors import ConceptVectors
from ema_lightning.domains import DOMAINS
from ema_lightning.report.claims import claims_section


def measured(refusal, degenerate=0.0, stage="val", step=10):
    """An evaluation with generated text: `refusal` and `degenerate` per domain (dicts default to 1.0
    and 0.0), the rest complied."""
    refusal = refusal if isinstance(refusal, dict) else dict.fromkeys(DOMAINS, refusal)
    degenerate = degenerate if isinstance(degenerate, dict) else dict.fromkeys(DOMAINS, degenerate)
    refusal = {d: refusal.get(d, 1.0) for d in DOMAINS}
    degenerate = {d: degenerate.get(d, 0.0) for d in DOMAINS}
    return replace(evaluation(stage, step, refusal=refusal), degenerate=domain_rates(degenerate),
                   complied=domain_rates({d: 1 - refusal[d] - degenerate[d] for d in DOMAINS}))


def unlearned(target, final, method="npo", contained=False, log_dir=""):
    name = f"{target}_{method}{'_retain' if contained else ''}"
    return run(name, target=target, method=method, contained=contained, log_dir=log_dir,
               evaluations=(measured(1.0, stage="baseline", step=0), final))


def claim(markdown, letter):
    """The Markdown of claim `letter`, up to the next claim."""
    return markdown.split(f"### ({letter})")[1].split("### (")[0]


def rows(text):
    return [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_spread_supported_by_compliance_within_noise_when_the_model_broke():
    runs = [unlearned("privacy", measured(0.0)), unlearned("bias", measured(0.0, degenerate=1.0))]
    text = claim(claims_section(runs), "a")
    broke, complied = rows(text)
    assert complied.startswith("| Privacy, npo | 1.000 [1.000, 1.000]") and complied.endswith("| supported |")
    assert "| 0.000 [0.000, 0.000] |" in broke and "within noise; the refusal drop came mostly as degeneration" in broke


def test_spread_undecided_without_an_unlearned_run():
    text = claim(claims_section([unlearned("privacy", measured(0.0), contained=True)]), "a")
    assert "Verdict: undecided: no unlearned run" in text


def test_safety_spreads_further_supported_contradicted_and_undecided():
    spreads, stays = measured(0.0), measured({"safety": 0.0, "cybersecurity": 0.0})
    text = claim(claims_section([unlearned("safety", spreads), unlearned("cybersecurity", stays)]), "b")
    assert [r.split(" | ")[-1] for r in rows(text)] == ["supported |", "supported |"]
    assert "| npo | Bias alone | 1.000 [1.000, 1.000] |" in text
    text = claim(claims_section([unlearned("safety", stays), unlearned("cybersecurity", spreads)]), "b")
    assert [r.split(" | ")[-1] for r in rows(text)] == ["contradicted |", "contradicted |"]
    text = claim(claims_section([unlearned("safety", spreads), unlearned("cybersecurity", spreads)]), "b")
    assert [r.split(" | ")[-1] for r in rows(text)] == ["within noise |", "within noise |"]
    text = claim(claims_section([unlearned("safety", spreads), unlearned("cybersecurity", spreads, method="compliance")]), "b")
    assert "Verdict: undecided: the study needs an unlearned Safety and an unlearned Cybersecurity run of the same method" in text


def test_containment_supported_partly_contradicted_and_undecided():
    def verdict(contained_final, unlearned_final=None):
        runs = [unlearned("privacy", unlearned_final or measured(0.0)), unlearned("privacy", contained_final, contained=True)]
        return rows(claim(claims_section(runs), "c"))[0].split(" | ")[-1]

    assert verdict(measured({"privacy": 0.0})) == "supported |"
    assert verdict(measured(1.0)).startswith("partly: restored, but the target's refusal")
    assert verdict(measured(0.0)).startswith("contradicted")
    assert verdict(measured({"privacy": 0.0}), unlearned_final=measured({"privacy": 0.0})).startswith(
        "undecided: the unlearned run kept its non-target refusal")
    text = claim(claims_section([unlearned("privacy", measured(0.0))]), "c")
    assert "Verdict: undecided: the study needs an unlearned and a contained run" in text


def save_concepts(log_dir, order):
    """Concept vectors whose layer-1 similarity to privacy falls along `order` (closest first)."""
    vectors = torch.zeros(len(DOMAINS), 4, 2)
    vectors[DOMAINS.index("privacy"), :, 0] = 1.0
    for rank, d in enumerate(order):
        angle = 0.2 * (rank + 1)
        vectors[DOMAINS.index(d), :] = torch.tensor([math.cos(angle), math.sin(angle)])
    for step in (0, 10):
        ConceptVectors(vectors, torch.ones(4, 2), dict.fromkeys(DOMAINS, 5), step=step).save(
            log_dir / "concept_vectors" / f"step={step}.safetensors")
    return str(log_dir)


def test_similarity_supported_contradicted_and_undecided(tmp_path):
    others = [d for d in DOMAINS if d != "privacy"]
    losses = measured({d: rank / 6 for rank, d in enumerate(others)} | {"privacy": 0.0})  # the first domain loses most

    def verdict(log_dir, final=losses):
        return rows(claim(claims_section([unlearned("privacy", final, log_dir=log_dir)]), "d"))[0]

    supported = verdict(save_concepts(tmp_path / "near", others))
    assert "| 1.000 | 0.003 | 6 | supported |" in supported
    assert verdict(save_concepts(tmp_path / "far", others[::-1])).endswith("| contradicted |")
    assert verdict(str(tmp_path / "near"), final=measured(0.0)).endswith(
        "undecided: constant refusal drop; correlation undefined |")
    assert "undecided: no run on it saved two concept-vector files" in verdict(str(tmp_path / "missing"))


def with_external(built_in, external):
    """`built_in` with `external` as its external eval set (refusal, degenerate and complied counts)."""
    return replace(built_in, external_refusal=external.refusal, external_over_refusal=external.over_refusal,
                   external_degenerate=external.degenerate, external_complied=external.complied)


def test_claims_read_the_external_report_set_when_every_baseline_and_final_has_it():
    """The built-in prompts say the model broke, the external (report) set says it complied: the claims
    follow the external set when every unlearning run has it at baseline and end, else the built-in one."""
    base = with_external(measured(1.0, stage="baseline", step=0), measured(1.0, stage="baseline", step=0))
    broke_here_complied_there = with_external(measured(0.0, degenerate=1.0), measured(0.0))
    middle = measured(0.5, step=5)  # evaluated during training on the built-in prompts only
    runs = [run("privacy_npo", target="privacy", method="npo", evaluations=(base, middle, broke_here_complied_there))]
    text = claims_section(runs)
    assert "Claims (a)-(c) are measured on the external prompts" in text
    assert rows(claim(text, "a"))[0].startswith("| Privacy, npo | 1.000 [1.000, 1.000]")
    runs.append(unlearned("bias", measured(0.0, degenerate=1.0)))  # no external set: every claim on built-in prompts
    text = claims_section(runs)
    assert "Claims (a)-(c) are measured on the built-in held-out prompts" in text
    assert "| Privacy, npo | 0.000 [0.000, 0.000]" in claim(text, "a")
