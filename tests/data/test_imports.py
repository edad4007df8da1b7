"""Reading records stays light: no torch, torchmetrics or transformers behind records, sources or builtin."""

import subprocess
import sys


def test_reading_records_imports_no_heavy_framework():
    code = (
        "import sys, ema_lightning.data.records, ema_lightning.data.sources, ema_lightning.data.builtin\n"
        "from ema_lightning import DOMAINS, canonical_domain\n"
        "heavy = {'torch', 'torchmetrics', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
