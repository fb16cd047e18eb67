"""The top-level names notebooks and users import resolve to the real objects, lazily."""
from __future__ import annotations

import subprocess
import sys

import kscale


def test_every_advertised_name_resolves():
    for name in kscale.__all__:
        assert getattr(kscale, name) is not None, name
    assert kscale.QuantSpec is kscale.quant.QuantSpec
    assert "gptq" in kscale.METHODS and "rtn" in kscale.METHODS  # registries filled on import
    assert {"opt", "pythia", "gpt2", "bloom", "llama", "toy"} <= set(kscale.FAMILIES.names())
    assert {"power", "offset", "neff", "chinchilla"} <= set(kscale.LAWS.names())


def test_import_kscale_does_not_import_torch():
    """`import kscale` (e.g. for kscale.fit in a notebook) stays cheap."""
    code = "import sys, kscale; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
