"""AlignmentModule: teach a model to refuse harmful prompts and help with benign ones.

Plain cross-entropy on (prompt -> refusal | helpful response) pairs; the DataModule without a
target domain puts every training record in the retain set. Builds the aligned base of a study.
"""

from __future__ import annotations

import torch

from ema_lightning.modules.base import CausalLMModule
from ema_lightning.modules.unlearning import check_finite
from ema_lightning.objectives import cross_entropy_loss


class AlignmentModule(CausalLMModule):
    """Cross-entropy on aligned responses (same arguments as `CausalLMModule`)."""

    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor:
        data = batch["retain"]
        loss = cross_entropy_loss(*self.scored(data))
        check_finite({"alignment": loss}, self.global_step)
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss
