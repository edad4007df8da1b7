"""LightningModules: the shared base, alignment fine-tuning, refusal unlearning and refusal-direction ablation."""

from ema_lightning.modules.ablation import RefusalAblationModule
from ema_lightning.modules.alignment import AlignmentModule
from ema_lightning.modules.base import CausalLMModule
from ema_lightning.modules.unlearning import RefusalUnlearningModule

__all__ = ["AlignmentModule", "CausalLMModule", "RefusalAblationModule", "RefusalUnlearningModule"]
