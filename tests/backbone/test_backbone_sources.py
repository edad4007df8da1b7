"""Model and tokenizer paths that cannot load say so in one line (issue 12, item 18), before any weights load."""

import pytest

from ema_lightning.backbone import Backbone, BackboneError, check_source, load_model, load_tokenizer
from ema_lightning.cli import main


def test_a_missing_local_base_names_the_path_and_how_to_build_it(in_repo, tmp_path):
    with pytest.raises(BackboneError, match=r"local path '.cache/nowhere/aligned_base' does not exist.*ema-lightning study"):
        load_tokenizer(Backbone(name_or_path=".cache/nowhere/aligned_base"))
    with pytest.raises(BackboneError, match="name_or_path: local path"):
        load_model(Backbone(name_or_path=str(tmp_path / "missing" / "model")))


def test_the_cli_reports_a_missing_base_before_training(in_repo, tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        main(["fit", "--config", "configs/models/tiny_aligned.yaml", "--config", "configs/unlearning/npo_safety.yaml",
              f"--model.init_args.backbone.name_or_path={tmp_path / 'aligned_base'}",
              f"--trainer.logger.init_args.save_dir={tmp_path}"])


def test_an_empty_tokenizer_folder_is_named(tmp_path):
    empty = tmp_path / "tokenizer"
    empty.mkdir()
    with pytest.raises(BackboneError, match=r"Backbone.tokenizer: folder .*tokenizer' holds no tokenizer"):
        load_tokenizer(Backbone(tiny={"model_type": "qwen2"}, tokenizer=str(empty)))
    with pytest.raises(BackboneError, match="holds no model"):
        load_model(Backbone(name_or_path=str(empty)))


def test_a_hub_id_without_a_hub_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_source("someone/some-model", "name_or_path")  # shaped like a hub id: left to transformers
    with pytest.raises(BackboneError, match=r"cannot load 'someone/some-model' \(not a local folder; as a hub id"):
        load_tokenizer(Backbone(name_or_path="someone/some-model"))
