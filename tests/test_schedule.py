"""EvalSchedule: validation runs after exactly the scheduled optimizer steps, across epochs and accumulation."""

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from ema_lightning.schedule import EvalSchedule, eval_steps


def test_eval_steps_default_is_powers_of_two_and_the_last_step():
    assert eval_steps(40) == [1, 2, 4, 8, 16, 32, 40]
    assert eval_steps(32) == [1, 2, 4, 8, 16, 32]
    assert eval_steps(30, steps=[3, 5], every=10) == [3, 5, 10, 20, 30]
    assert eval_steps(5, steps=[2, 9]) == [2, 5]


@pytest.mark.parametrize("kwargs, message", [({"steps": [0, 3]}, "step 0 is the baseline"), ({"every": 0}, "every must be >= 1")])
def test_eval_steps_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        eval_steps(10, **kwargs)


class Recorder(pl.LightningModule):
    """A linear model that records the global step of every validation."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.validated_at: list[int] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.validated_at.append(self.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_validation_runs_after_the_scheduled_steps_only(tmp_path, accumulate):
    data = DataLoader(torch.randn(10, 2), batch_size=2)  # 5 batches per epoch: the schedule crosses epochs
    module = Recorder()
    trainer = pl.Trainer(max_steps=13, callbacks=[EvalSchedule(every=6)], check_val_every_n_epoch=None,
                         accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=DataLoader(torch.randn(2, 2)))
    assert module.validated_at == [1, 2, 4, 6, 8, 12, 13]


def test_schedule_needs_step_based_validation(tmp_path):
    trainer = pl.Trainer(max_steps=4, callbacks=[EvalSchedule()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="check_val_every_n_epoch: null"):
        trainer.fit(Recorder(), train_dataloaders=DataLoader(torch.randn(4, 2)), val_dataloaders=DataLoader(torch.randn(2, 2)))
