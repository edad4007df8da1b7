"""LightningModules: the shared base, alignment fine-tuning and refusal unlearning."""

from ema_lightning.modules.alignment import AlignmentModule
from ema_lightning.modules.base import CausalLMModule
from ema_lightning.modules.unlearning import RefusalUnlearningModule

__all__ = ["AlignmentModule", "CausalLMModule", "RefusalUnlearningModule"]
