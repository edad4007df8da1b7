"""Command line: `ema-lightning fit|validate|test|study|extract`.

fit / validate / test are LightningCLI subcommands over any `CausalLMModule` subclass and the
`RefusalDataModule` (configs use class_path/init_args). `study` runs a whole EMA study from a study
YAML; `extract` writes concept vectors of any model or checkpoint.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ema_lightning.data.datamodule import RefusalDataModule
from ema_lightning.modules.base import CausalLMModule

# `--help` shows the docstring under each dataclass field (Backbone, LoraSettings, RecordSource, ...).
set_parsing_settings(docstring_parse_attribute_docstrings=True)

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "lightning_logs", "name": "default"},
    },
    "num_sanity_val_steps": -1,  # the full eval set before training: the baseline of the EMA score
}

USAGE = """usage: ema-lightning {fit,validate,test,study,extract} [--config CONFIG.yaml] [--help]

  fit        train (alignment or refusal unlearning), evaluating refusal in all seven domains
  validate   measure refusal per domain of a model or checkpoint
  test       same as validate, on the test loop
  study      run a whole EMA study (baseline, unlearning, containment, report) from a study YAML
  extract    write concept vectors per domain and layer of any model or checkpoint
"""


class EMALightningCLI(LightningCLI):
    """LightningCLI with the project's defaults; data is validated before the model loads."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", CausalLMModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("datamodule_class", RefusalDataModule)
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        super().__init__(args=args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"seed_everything": 0})

    def _load_data(self) -> None:
        # Records are read and validated here, before the trainer builds the model.
        self.datamodule.load()

    before_fit = before_validate = before_test = _load_data


def main(args: Optional[list[str]] = None) -> Any:
    """Entry point of `ema-lightning` and `python -m ema_lightning`; callable from tests with a list."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    if argv[0] == "study":
        from ema_lightning.study import study_main

        return study_main(argv[1:])
    if argv[0] == "extract":
        from ema_lightning.concepts.extract import extract_main

        return extract_main(argv[1:])
    return EMALightningCLI(args=argv if args is not None else None)


def run() -> int:
    """Console-script entry: exit 0 on success; a configuration or data error prints one line
    (`ema-lightning: error: <file>:<line>: field ...`) and exits 2. EMA_LIGHTNING_DEBUG=1 shows tracebacks."""
    import os

    from ema_lightning.data.records import RecordError
    from ema_lightning.domains import UnknownDomainError

    expected: tuple[type[BaseException], ...] = (RecordError, UnknownDomainError, FloatingPointError, ValueError)
    try:
        main()
    except expected as error:
        if os.environ.get("EMA_LIGHTNING_DEBUG"):
            raise
        print(f"ema-lightning: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
