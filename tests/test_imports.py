"""Every kscale module imports first (issue 10: ``import kscale.tracking`` in a fresh interpreter
raised ImportError through a tracking -> sweep -> job cycle that only import order hid).

Import cycles between kscale modules depend only on which kscale module is imported first, so
each module is imported after removing every ``kscale`` module from ``sys.modules`` (third-party
packages stay loaded, which keeps this fast) in one fresh interpreter."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import kscale

SCRIPT = r"""
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "kscale" or m.startswith("kscale.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\n" + traceback.format_exc(limit=3))
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _modules() -> list[str]:
    root = Path(kscale.__file__).parent
    names = [m.name for m in pkgutil.walk_packages([str(root)], prefix="kscale.")]
    return [n for n in names if not n.endswith("__main__")]


def test_every_kscale_module_imports_first_in_a_fresh_interpreter():
    modules = _modules()
    assert {"kscale.tracking", "kscale.sweep.job", "kscale.quant.methods", "kscale.config"} <= set(modules)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *modules], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
