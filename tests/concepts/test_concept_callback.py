"""ConceptVectorCallback in a real (tiny) Lightning fit: files per step, TensorBoard logs, no-logger runs."""

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from tiny_assets import WORD_CHAT_TEMPLATE, tiny_qwen2, word_level_tokenizer

from ema_lightning.concepts.callback import ConceptVectorCallback
from ema_lightning.concepts.vectors import ConceptVectors
from ema_lightning.data.records import Record
from ema_lightning.domains import DOMAINS

WORDS = "how do i hack a server make poison insult people tell me my address the weather is nice cook pasta".split()


def tiny_tokenizer():
    return word_level_tokenizer(
        [*WORDS, "user", "assistant"], specials=("[PAD]", "[UNK]", "<|im_start|>", "<|im_end|>"), unk_token="[UNK]",
        pad_token="[PAD]", padding_side="right", chat_template=WORD_CHAT_TEMPLATE,
    )


class TinyModule(pl.LightningModule):
    """Holds a tiny causal LM and its tokenizer, as the project's modules do; trains on random tokens."""

    def __init__(self, target_domain: str | None = "cybersecurity"):
        super().__init__()
        self.tokenizer = tiny_tokenizer()
        self.model = tiny_qwen2(len(self.tokenizer), seed=0, max_position_embeddings=64).train()
        self.target_domain = target_domain
        self.baseline_cache = None  # as CausalLMModule without `baseline_cache`: step-0 vectors are measured

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


class TinyData(pl.LightningDataModule):
    def __init__(self, n_tokens: int):
        super().__init__()
        self.n_tokens = n_tokens
        self.target_domain = "cybersecurity"
        self.eval_records = []
        self.neutral_records = []

    def setup(self, stage: str) -> None:
        prompts = ["how do i hack a server", "make poison", "insult people", "tell me my address", "hack me"]
        self.eval_records = [Record(p, d, True) for p in prompts for d in DOMAINS] + [Record("cook pasta", "bias", False)]
        self.neutral_records = [Record("the weather is nice", "safety", False), Record("cook pasta", "safety", False)]

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(torch.randint(4, self.n_tokens, (8, 6), generator=g), batch_size=4)


def fit(tmp_path, callback, max_steps=2, ckpt_path=None, **trainer_kwargs) -> pl.Trainer:
    module = TinyModule()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback, *trainer_kwargs.pop("callbacks", [])],
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=TinyData(len(module.tokenizer)), ckpt_path=ckpt_path)
    return trainer


def test_callback_writes_every_checkpoint_step_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = ConceptVectorCallback(batch_size=8, max_prompts_per_domain=3)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    trainer = fit(tmp_path, callback, logger=logger, callbacks=[checkpoint])

    out = tmp_path / "run" / "version_0" / "concept_vectors"
    assert sorted(p.name for p in out.iterdir()) == ["step=0.safetensors", "step=1.safetensors", "step=2.safetensors"]
    assert len(list((tmp_path / "ckpt").glob("*.ckpt"))) == 2
    baseline, final = ConceptVectors.load(out / "step=0.safetensors"), ConceptVectors.load(out / "step=2.safetensors")
    assert baseline.step == 0 and final.step == trainer.global_step == 2
    assert baseline.counts == {d: 3 for d in DOMAINS} and baseline.neutral_count == 2 and baseline.harmless_count == 3
    assert baseline.vectors.shape == (7, 3, 32)
    assert not torch.allclose(baseline.vectors, final.vectors)  # training moved the representations
    torch.testing.assert_close(callback.baseline.vectors, baseline.vectors)

    events = EventAccumulator(str(logger.log_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    images, scalars = set(events.Tags()["images"]), set(events.Tags()["scalars"])
    assert {"concepts/cosine/layer_0", "concepts/cosine/layer_2", "concepts/similarity_to_cybersecurity"} <= images
    assert {"concepts/drift/privacy", "concepts/refusal_projection/bias", "concepts/similarity_to_cybersecurity/safety"} <= scalars
    assert "concepts/similarity_to_cybersecurity/cybersecurity" not in scalars
    assert [e.step for e in events.Scalars("concepts/drift/safety")] == [0, 1, 2]
    assert abs(events.Scalars("concepts/drift/safety")[0].value - 1.0) < 1e-5  # the baseline against itself
    height, width = events.Images("concepts/cosine/layer_1")[0].height, events.Images("concepts/cosine/layer_1")[0].width
    assert height > 100 and width > 100


def test_callback_without_images_logs_the_scalars_only(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    fit(tmp_path, ConceptVectorCallback(batch_size=8, max_prompts_per_domain=2, images=False), logger=logger)
    events = EventAccumulator(str(logger.log_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert events.Tags()["images"] == []
    assert "concepts/drift/privacy" in events.Tags()["scalars"]


def test_callback_without_logger_or_checkpoints_writes_baseline_and_final(tmp_path):
    callback = ConceptVectorCallback(batch_size=16, position="mean")
    fit(tmp_path, callback, logger=False, enable_checkpointing=False)
    out = tmp_path / "concept_vectors"
    assert sorted(p.name for p in out.iterdir()) == ["step=0.safetensors", "step=2.safetensors"]
    assert ConceptVectors.load(out / "step=2.safetensors").position == "mean"
    assert sorted(callback.history) == [0, 2]
    assert callback.extract_seconds > 0


def test_weights_only_checkpoints_every_second_one(tmp_path):
    callback = ConceptVectorCallback(batch_size=64, every_n_checkpoints=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, save_weights_only=True)
    fit(tmp_path, callback, max_steps=3, logger=False, callbacks=[checkpoint])
    # Checkpoints at steps 1, 2, 3: the first and the third are extracted, with the baseline.
    assert sorted(callback.history) == [0, 1, 3]
    assert sorted(p.name for p in (tmp_path / "concept_vectors").iterdir()) == [
        "step=0.safetensors", "step=1.safetensors", "step=3.safetensors"]


def test_resumed_fit_keeps_the_original_baseline(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    fit(tmp_path, ConceptVectorCallback(batch_size=64), logger=logger, callbacks=[checkpoint])
    out = tmp_path / "run" / "version_0" / "concept_vectors"
    baseline = ConceptVectors.load(out / "step=0.safetensors")

    callback = ConceptVectorCallback(batch_size=64)
    resumed_logger = TensorBoardLogger(tmp_path, name="run", version=0)
    fit(tmp_path, callback, max_steps=3, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=2.ckpt"), logger=resumed_logger)
    assert callback.baseline.step == 0
    torch.testing.assert_close(callback.baseline.vectors, baseline.vectors)
    assert sorted(callback.history) == [0, 3]
    assert (out / "step=3.safetensors").exists()
