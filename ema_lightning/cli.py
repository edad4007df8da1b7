"""Command line: `ema-lightning fit|validate|test|study|ablate|extract|suite|report`; the top of the import graph.

fit / validate / test are LightningCLI subcommands over any `CausalLMModule` subclass and the
`RefusalDataModule` (configs use class_path/init_args). `study` runs a whole EMA study from a study
YAML, each run a fit through `study_fit`; `extract` writes concept vectors of any model or checkpoint.
"""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Optional

from jsonargparse import set_parsing_settings
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ema_lightning.checkpoints import CheckpointSaveError, check_checkpoint, with_atomic_checkpoint_io
from ema_lightning.data.datamodule import RefusalDataModule
from ema_lightning.modules.base import CausalLMModule

log = logging.getLogger(__name__)

# `--help` shows the docstring under each dataclass field (Backbone, LoraSettings, RecordSource, ...).
set_parsing_settings(docstring_parse_attribute_docstrings=True)

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "lightning_logs", "name": "default"},
    },
    "num_sanity_val_steps": -1,  # the full eval set before training: the baseline of the EMA score
}

USAGE = """usage: ema-lightning {fit,validate,test,study,ablate,extract,suite,report} [--config CONFIG.yaml] [--help]

  fit        train (alignment or refusal unlearning), evaluating refusal in all seven domains
  validate   measure refusal per domain of a model or checkpoint
  test       same as validate, on the test loop
  study      run a whole EMA study (baseline, unlearning, containment, report) from a study YAML
  ablate     refusal-direction ablation: evaluate, project the refusal direction out, evaluate again
  extract    write concept vectors per domain and layer of any model or checkpoint
  suite      count a prompt suite's prompts per domain and split (e.g. configs/data/public_suite.yaml)
  report     write a study's report again from its results.json (this version's report code)
"""


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, titled by optimizer steps when training is bounded by
    `max_steps` (Lightning writes `Epoch 11/-2` when `max_epochs` is -1)."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs in (None, -1):
            return f"Epoch {current_epoch} · step {trainer.global_step}/{trainer.max_steps}"
        return super()._get_train_description(current_epoch)


class EMALightningCLI(LightningCLI):
    """LightningCLI with the project's defaults; data is validated before the model loads."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True, ablate: bool = False, **kwargs: Any) -> None:
        self.ablate = ablate
        """`ema-lightning ablate`: the model must be a RefusalAblationModule."""
        kwargs.setdefault("model_class", CausalLMModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("datamodule_class", RefusalDataModule)
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        super().__init__(args=args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"seed_everything": 0})
        # One target domain for both: the DataModule selects the forget set, the module scores EMA.
        parser.link_arguments("data.target_domain", "model.init_args.target_domain")

    def instantiate_trainer(self, **kwargs: Any):
        config = self.config_init.get(self.subcommand) if self.subcommand else self.config_init
        trainer = config.get("trainer") or {}
        callbacks = list(trainer.get("callbacks") or [])
        if trainer.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        # Checkpoints go to `<name>.tmp-<pid>` beside the target, then are renamed: a full disk leaves no half file.
        kwargs["plugins"] = with_atomic_checkpoint_io(trainer.get("plugins"))
        return super().instantiate_trainer(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        # Before LightningCLI's own torch.load of it and before any model loads: one line for a bad file.
        if check_checkpoint(ckpt_path) is not None:
            check_resume_settings(ckpt_path, self.config[subcommand]["model"])

    def _connect_data(self) -> None:
        warn_emulated_bf16(self.trainer)
        # Records are read and validated here, before the trainer builds the model.
        data = self.datamodule.connect(self.model.tokenizer, self.model.generate_responses).load()
        self.model.check_data(data.forget_records, data.retain_records, data.encoding.forget_responses)

    def before_fit(self) -> None:
        self._connect_data()
        check_run_folder(self.trainer.log_dir, self.config["fit"].get("ckpt_path"))

    before_validate = before_test = _connect_data

    def fit(self, model: CausalLMModule, **kwargs: Any) -> None:
        """`trainer.fit`, except for a `RefusalAblationModule`, which trains nothing: evaluate, ablate the
        refusal direction, evaluate again (`modules.ablation.run_ablation`)."""
        from ema_lightning.modules.ablation import RefusalAblationModule, run_ablation

        if self.ablate and not isinstance(model, RefusalAblationModule):
            raise ValueError(f"ema-lightning ablate: the model is a {type(model).__name__}; add an ablation preset "
                             "after the model config, e.g. --config configs/ablation/refusal_direction.yaml")
        if not isinstance(model, RefusalAblationModule):
            return self.trainer.fit(model, **kwargs)
        if kwargs.get("ckpt_path"):
            raise ValueError("an ablation run trains nothing and has no checkpoint to resume: drop --ckpt_path")
        return run_ablation(self.trainer, model, kwargs.get("datamodule"))


def warn_emulated_bf16(trainer) -> None:
    """Warn when bf16 compute is asked for on a CPU without native bf16 instructions (AVX512-BF16, AMX):
    there it is emulated and slower than float32."""
    from lightning.pytorch.accelerators import CPUAccelerator

    if "bf16" not in str(trainer.precision) or not isinstance(trainer.accelerator, CPUAccelerator):
        return
    import torch

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("trainer.precision=%s on a CPU without native bf16 instructions: bf16 is emulated and slower than "
                    "float32 here; pass --trainer.precision=32-true", trainer.precision)


def check_resume_settings(ckpt_path: str, model_config: Any) -> None:
    """Refuse a `--ckpt_path` whose saved model settings differ from the command's: LightningCLI would
    otherwise replace the command's settings with the checkpoint's, silently."""
    saved = dict((check_checkpoint(ckpt_path) or {}).get("hyper_parameters") or {})
    saved.pop("_instantiator", None)
    saved_class = saved.pop("_class_path", None)
    given = model_config.as_dict() if hasattr(model_config, "as_dict") else dict(model_config)
    given_class, given_args = given.get("class_path"), given.get("init_args") or {}
    differences = [f"{key}: checkpoint {value!r}, command {given_args.get(key)!r}"
                   for key, value in sorted(saved.items()) if key in given_args and _plain(given_args[key]) != _plain(value)]
    if saved_class and given_class and saved_class.rsplit(".", 1)[-1] != given_class.rsplit(".", 1)[-1]:
        differences.insert(0, f"model class: checkpoint {saved_class}, command {given_class}")
    if differences:
        raise ValueError(f"{ckpt_path}: the checkpoint was trained with other model settings than this command gives "
                         f"({'; '.join(differences)}); resume with the settings it was trained with (the run's "
                         "config.yaml beside it) or start a new run without --ckpt_path")


def _plain(value: Any) -> Any:
    """Settings compared as plain JSON values (tuples as lists, 1 == 1.0)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_run_folder(log_dir: Optional[str], ckpt_path: Optional[str]) -> None:
    """Refuse to write into a run folder that already holds a run, unless resuming from a checkpoint."""
    from pathlib import Path

    import os

    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    if not log_dir or ckpt_path or rank != "0":  # other ranks start while rank 0 writes the folder
        return
    folder = Path(log_dir)
    held = [name for name in ("config.yaml", "eval_history.json", "checkpoints", "export") if (folder / name).exists()]
    if held:
        raise ValueError(f"{folder}: this run folder already holds a run ({', '.join(held)}); choose another "
                         "--trainer.logger.init_args.version (or leave it unset for a new one), or resume it with --ckpt_path")


def study_fit(request, run: bool):
    """The study's `fit` (see `ema_lightning.study.Fit`): one LightningCLI fit of a `FitRequest`,
    or with `run=False` its parsed config and loaded data only."""
    from ema_lightning.baseline_cache import may_share_baseline
    from ema_lightning.concepts.callback import ConceptVectorCallback
    from ema_lightning.study import FitOutcome

    argv = [a for path in request.config for a in ("--config", path)] + list(request.args)
    argv += [f"--{key}={value}" for key, value in request.overrides]
    argv += [f"--trainer.logger.init_args.save_dir={request.output_dir}", f"--trainer.logger.init_args.name={request.name}"]
    cli = EMALightningCLI(args=["fit", *argv] if run else argv, run=run)  # without run: no subcommand
    if not run:
        cli.datamodule.load()
    config = cli.config.get("fit", cli.config) if run else cli.config
    concept_s = sum(c.extract_seconds for c in cli.trainer.callbacks if isinstance(c, ConceptVectorCallback))
    return FitOutcome(
        target=cli.model.target_domain, method=cli.model.method, contained=cli.model.contained,
        seed=int(config.get("seed_everything") or 0), log_dir=str(cli.trainer.log_dir) if run else None,
        evaluations=tuple(cli.model.evaluations), concept_s=concept_s, evaluates=evaluates(cli.trainer),
        shares_baseline=may_share_baseline(cli.model.backbone),
        judges={"main": cli.model.evaluator.judge, **cli.model.evaluator.audit_judges},
    )


def quiet_study_fit(request, run: bool):
    """`study_fit` as a study runs it: only the package's warnings, no Lightning notes (also in the
    study's worker processes, which start without the parent's logging settings)."""
    configure_logging(logging.WARNING)
    with _quiet(study=True):
        return study_fit(request, run)


def evaluates(trainer) -> bool:
    """Whether fitting with this trainer runs validation at least once during training."""
    from ema_lightning.schedule import EvalSchedule

    if trainer.limit_val_batches == 0:
        return False
    if any(isinstance(c, EvalSchedule) for c in trainer.callbacks):
        return True
    interval, every_epochs = trainer.val_check_interval, trainer.check_val_every_n_epoch
    if every_epochs is None:  # step-based: an integer interval must fall within max_steps
        return isinstance(interval, int) and (trainer.max_steps in (None, -1) or interval <= trainer.max_steps)
    return trainer.max_epochs in (None, -1) or every_epochs <= trainer.max_epochs or trainer.max_steps not in (None, -1)


class _DropTips(logging.Filter):
    """Lightning's advertisements of its cloud products (litlogger, litmodels)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


@contextmanager
def _quiet(study: bool = False):
    """Silence what tells a user nothing: LightningCLI's warning about `args` beside `sys.argv` (the
    study passes each run's arguments on purpose), its advice to sync already-synced evaluation metrics
    and Lightning's product tips; in a study, which
    prints one line per stage itself, also Lightning's per-run notes ("Seed set", "GPU available")."""
    tips = _DropTips()
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
             "lightning.fabric.utilities.rank_zero")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addFilter(tips)
        for handler in logger.handlers:
            handler.addFilter(tips)
        if study:
            logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            # The evaluation metrics are logged after their torchmetrics have synced across ranks: the
            # same value on every rank, so Lightning's advice to sync them once more does not apply.
            warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")
            if study:  # library deprecation notes and Lightning's note on a pretrained base's eval-mode modules
                for message in (".*is_gradient_checkpointing", ".*LeafSpec", r"Found \d+ module\(s\) in eval mode"):
                    warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeFilter(tips)
            logger.setLevel(level)
            for handler in logger.handlers:
                handler.removeFilter(tips)


def configure_logging(level: int = logging.INFO) -> None:
    """Show the package's own messages (records loaded and dropped, duplicates, truncation, reuse) on
    stderr, once: the library itself only logs, the command line decides what is shown."""
    logger = logging.getLogger("ema_lightning")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("ema-lightning: %(message)s"))
        logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the message (not the one at set-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def main(args: Optional[list[str]] = None) -> Any:
    """Entry point of `ema-lightning` and `python -m ema_lightning`; callable from tests with a list."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    # A study prints one line per stage itself; its runs show only the package's warnings.
    configure_logging(logging.WARNING if argv[0] == "study" else logging.INFO)
    check_config_files(argv)
    with _quiet(study=argv[0] == "study"):
        if argv[0] == "study":
            from ema_lightning.study import study_main

            return study_main(argv[1:], quiet_study_fit)
        if argv[0] == "suite":
            return suite_main(argv[1:])
        if argv[0] == "report":
            return report_main(argv[1:])
        if argv[0] == "ablate":
            return EMALightningCLI(args=["fit", *argv[1:]], ablate=True)
        if argv[0] == "extract":
            from ema_lightning.concepts.extract import extract_main

            return extract_main(argv[1:])
        return EMALightningCLI(args=argv if args is not None else None)


def suite_main(argv: list[str]) -> None:
    """`ema-lightning suite FILE`: a prompt suite's prompts per domain and split, and what each member gave."""
    import argparse

    from ema_lightning.data.sources import read_suite

    parser = argparse.ArgumentParser(prog="ema-lightning suite", description=suite_main.__doc__)
    parser.add_argument("suite", help="a suite YAML file, e.g. configs/data/public_suite.yaml")
    _, report = read_suite(parser.parse_args(argv).suite)
    print(f"## {report.name}\n\n{report.table()}")


def report_main(argv: list[str]):
    """`ema-lightning report RESULTS.json [--output DIR]`: a study's report.md and figures written again
    from its results.json, with this version's report code. Run it from the study's working directory:
    the runs' log folders (their concept vectors) are named relative to it."""
    import argparse
    import json
    from pathlib import Path

    from ema_lightning.report import write_report
    from ema_lightning.results import StudyResult

    parser = argparse.ArgumentParser(prog="ema-lightning report", description=report_main.__doc__)
    parser.add_argument("results", help="a study's results.json")
    parser.add_argument("--output", help="folder for report.md and figures/ (default: the folder of RESULTS.json)")
    args = parser.parse_args(argv)
    path = Path(args.results)
    try:
        study = StudyResult.load(path)
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: not a study's results.json (field {error})") from None
    report = write_report(Path(args.output or path.parent) / "report.md", study)
    print(report)
    return report


def check_config_files(argv: list[str]) -> None:
    """Every `--config` file exists and is valid YAML, or one line names the file, line and column
    (jsonargparse's own message names neither the file nor which `--config` it was)."""
    import yaml

    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        try:
            text = open(path, encoding="utf-8-sig").read()
        except OSError as error:
            raise ValueError(f"--config {path}: cannot read it ({error.strerror or error})") from None
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{path}{where}: YAML syntax error: {problem}") from None


def headline(message: str) -> str:
    """The line of an error that matters, first: jsonargparse wraps a class's own ValueError (e.g.
    `beta must be > 0`) in a dump of every Union subtype and the whole given Namespace."""
    lines = message.splitlines()
    reasons = [line.strip()[2:] for line in lines if line.strip().startswith("- ") and not line.strip().startswith("- Expected a")]
    if "Does not validate against any of the Union subtypes" in message and reasons:
        return reasons[0]
    return "\n".join(line for line in lines if not line.startswith("Given value"))


def run() -> int:
    """Console-script entry: exit 0 on success; a configuration or data error prints one line
    (`ema-lightning: error: <file>:<line>: field ...`) and exits 2. EMA_LIGHTNING_DEBUG=1 shows tracebacks."""
    import os

    from ema_lightning.data.records import RecordError
    from ema_lightning.domains import UnknownDomainError

    expected: tuple[type[BaseException], ...] = (RecordError, UnknownDomainError, FloatingPointError, ValueError,
                                                 CheckpointSaveError)
    try:
        main()
        close_process_group()
    except expected as error:
        if os.environ.get("EMA_LIGHTNING_DEBUG"):
            raise
        print(f"ema-lightning: error: {headline(str(error))}", file=sys.stderr)
        return 2
    return 0


def close_process_group() -> None:
    """Destroy the default process group after a run that ended normally. Lightning leaves it alive, and
    gloo's worker threads then outlive the interpreter and can abort the process at exit (SIGABRT,
    "terminate called without an active exception"; pytorch/pytorch#190489). Not after an error: a rank
    that failed must not wait on the others."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run())
