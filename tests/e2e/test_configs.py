"""Every YAML in configs/ parsed by the real CLI, with the heavy work mocked: a broken config fails here
in seconds, not after an hour on a GPU.

- fit configs: `ema-lightning fit --config ... --print_config` exits 0 (tiny config alone and with each
  strategy preset, each 7B model preset with each GPU strategy preset);
- 7B model presets with each configs/unlearning/*.yaml: the CLI instantiates module, data and trainer
  (accelerator forced to CPU) and loads the data; loading weights or tokenizers is forbidden;
- configs/data/external/*.yaml: `RecordSource.from_file` and the source validation;
- configs/study/*.yaml: the study parser and `check_study` (every run parsed, its data loaded).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def _names(folder: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (CONFIGS / folder).glob("*.yaml"))


MODELS_7B = ["configs/models/qwen2.5-7b-instruct.yaml", "configs/models/mistral-7b-instruct-v0.3.yaml"]
UNLEARNING = _names("unlearning")
ABLATION = _names("ablation")
STRATEGIES = _names("strategies")
GPU_STRATEGIES = [s for s in STRATEGIES if not s.endswith("_cpu.yaml")]
EXTERNAL = _names("data/external")
SUITES = _names("data")  # loaded, deduplicated and split by tests/data/test_suite.py
STUDIES = _names("study")
JUDGES = _names("judges")  # parsed and instantiated by tests/evaluation/test_generative_judges.py
ALIGN = sorted(str(p.relative_to(ROOT)) for p in CONFIGS.glob("study/*/*.yaml"))

FIT_COMBINATIONS = (
    [["configs/tiny_cpu.yaml"]]
    + [["configs/tiny_cpu.yaml", s] for s in STRATEGIES]
    + [[m, UNLEARNING[0], s] for m in MODELS_7B for s in GPU_STRATEGIES]
    + [[a] for a in ALIGN]
)


@pytest.fixture(autouse=True)
def _root(monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name each other relative to the repository root


@pytest.fixture
def no_weights(monkeypatch):
    """Parsing and instantiating a config must not load a model or a tokenizer."""
    import ema_lightning.backbone as backbone

    def forbidden(*args, **kwargs):
        raise AssertionError("a config test tried to load weights or a tokenizer")

    for name in ("load_model", "load_tokenizer"):
        monkeypatch.setattr(backbone, name, forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _print_config(files: list[str], *extra: str) -> dict:
    from ema_lightning.cli import main

    argv = ["fit"] + [arg for f in files for arg in ("--config", f)] + list(extra) + ["--print_config"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None), f"{files}: exit {exit_info.value.code}"
    return yaml.safe_load(out.getvalue())


def test_every_config_is_checked():
    checked = {f for combo in FIT_COMBINATIONS for f in combo} | set(MODELS_7B) | set(UNLEARNING) | set(ABLATION) | set(EXTERNAL) | set(SUITES) | set(STUDIES) | set(JUDGES)
    study_configs = set()
    for study in STUDIES:
        spec = yaml.safe_load((ROOT / study).read_text())
        study_configs |= set((spec.get("base") or {}).get("config", []))
        study_configs |= {c for run in spec["runs"] for c in run["config"]}
    every = {str(p.relative_to(ROOT)) for p in CONFIGS.rglob("*.yaml")}
    assert every - checked - study_configs == set()


@pytest.mark.parametrize("files", FIT_COMBINATIONS, ids=lambda files: "+".join(Path(f).stem for f in files))
def test_fit_configs_parse(files, no_weights):
    config = _print_config(files)
    assert config["model"]["class_path"].startswith("ema_lightning.modules.")
    for f in files:  # each file's own settings survive the merge (the last file wins)
        own = yaml.safe_load((ROOT / f).read_text()) or {}
        strategy = (own.get("trainer") or {}).get("strategy")
        if strategy is not None and f == files[-1]:
            assert config["trainer"]["strategy"]["class_path"] == strategy["class_path"]


@pytest.mark.parametrize("unlearning", UNLEARNING, ids=lambda f: Path(f).stem)
@pytest.mark.parametrize("model", MODELS_7B, ids=lambda f: Path(f).stem)
def test_7b_presets_with_each_unlearning_config(model, unlearning, no_weights):
    from ema_lightning.cli import EMALightningCLI
    from ema_lightning.domains import canonical_domain

    cli = EMALightningCLI(
        args=["--config", model, "--config", unlearning, "--trainer.accelerator=cpu", "--trainer.logger=false"], run=False
    )
    cli.datamodule.load()
    preset = yaml.safe_load((ROOT / model).read_text())["model"]["init_args"]
    method = yaml.safe_load((ROOT / unlearning).read_text())
    lora = cli.model.backbone.lora
    assert cli.model.backbone.name_or_path == preset["backbone"]["name_or_path"]
    assert (lora.r, lora.alpha, list(lora.target_modules)) == (
        preset["backbone"]["lora"]["r"], preset["backbone"]["lora"]["alpha"], preset["backbone"]["lora"]["target_modules"]
    )
    assert cli.model.forget_objective == method["model"]["init_args"]["forget_objective"]
    assert cli.model.alpha == method["model"]["init_args"].get("alpha", 0.0)
    target = canonical_domain(method["data"]["target_domain"])
    assert cli.datamodule.target_domain == target
    assert cli.datamodule.forget_records and {r.domain for r in cli.datamodule.forget_records} == {target}
    assert cli.model.model is None  # nothing loaded: configure_model was not called


@pytest.mark.parametrize("ablation", ABLATION, ids=lambda f: Path(f).stem)
@pytest.mark.parametrize("model", MODELS_7B, ids=lambda f: Path(f).stem)
def test_7b_presets_with_each_ablation_config(model, ablation, no_weights):
    from ema_lightning.cli import EMALightningCLI
    from ema_lightning.modules import RefusalAblationModule

    cli = EMALightningCLI(args=["--config", model, "--config", ablation, "--data.target_domain=safety",
                                "--trainer.accelerator=cpu", "--trainer.logger=false"], run=False)
    preset = yaml.safe_load((ROOT / ablation).read_text())
    assert isinstance(cli.model, RefusalAblationModule)
    assert cli.model.direction_kind == preset["model"]["init_args"]["direction"]
    assert cli.model.export == "none" and cli.model.model is None
    assert cli.model.backbone.name_or_path == yaml.safe_load((ROOT / model).read_text())["model"]["init_args"]["backbone"]["name_or_path"]


@pytest.mark.parametrize("strategy", ["configs/strategies/ddp.yaml", "configs/strategies/fsdp2_cpu.yaml"], ids=lambda f: Path(f).stem)
def test_cpu_strategy_presets_build_a_trainer(strategy, no_weights):
    from ema_lightning.cli import EMALightningCLI

    extra = ["--trainer.devices=2"] if strategy.endswith("ddp.yaml") else []
    cli = EMALightningCLI(
        args=["--config", "configs/tiny_cpu.yaml", "--config", strategy, "--trainer.logger=false", *extra], run=False
    )
    expected = yaml.safe_load((ROOT / strategy).read_text())["trainer"]["strategy"]["class_path"].rsplit(".", 1)[1]
    assert type(cli.trainer.strategy).__name__ == expected
    assert cli.trainer.num_devices == 2


@pytest.mark.parametrize("path", EXTERNAL, ids=lambda f: Path(f).stem)
def test_external_data_configs(path):
    from ema_lightning.data.sources import RecordSource, resolve_source, validate_source

    source = RecordSource.from_file(ROOT / path)
    validate_source(source)
    resolved = resolve_source(source)
    assert resolved.path == source.path and resolved.mapping_file is None  # the mapping file is merged in
    # every mapped category names one of the seven domains (or drops the row)
    from ema_lightning.domains import canonical_domain

    for mapping in [resolved.category_to_domain or {}, *(resolved.category_overrides or {}).values()]:
        for domain in mapping.values():
            if domain is not None:
                canonical_domain(domain)


@pytest.mark.parametrize("path", STUDIES, ids=lambda f: Path(f).stem)
def test_study_configs(path, no_weights):
    from ema_lightning.cli import study_fit
    from ema_lightning.domains import DOMAINS
    from ema_lightning.study import check_study, parse_study

    study = parse_study(["--config", path])
    facts = check_study(study, study_fit)
    assert len(facts) == len(study.runs)
    assert all(f.target in DOMAINS for f in facts)
