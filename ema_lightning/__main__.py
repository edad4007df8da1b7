import sys

from ema_lightning.cli import run

sys.exit(run())
