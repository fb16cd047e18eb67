"""kscale: k-bit inference scaling-law studies.

Quantize every size of a model family to k bits, count every stored bit, evaluate,
and fit scaling laws over total model bits (Dettmers & Zettlemoyer 2022).

The top-level names are imported lazily (PEP 562), so ``import kscale`` is cheap: a name's
module is imported on first use (``kscale.load_results`` without torch; ``kscale.fit_law``
imports torch, which its fits run on, but not transformers)::

    from kscale import QuantSpec, quantize_model, load_results, fit_law
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "quant", "models", "data", "evaluate", "toy", "sweep", "results", "tracking",
    "fit", "pareto", "plots", "report", "config", "registry", "paths", "net",
}

# public name -> module that defines it
_EXPORTS = {
    "QuantSpec": "kscale.quant",
    "ModuleFilter": "kscale.quant",
    "codebook": "kscale.quant",
    "quantize": "kscale.quant",
    "fake_quantize": "kscale.quant",
    "quantize_model": "kscale.quant",
    "apply_method": "kscale.quant",
    "BitLedger": "kscale.quant",
    "WeightSnapshot": "kscale.quant",
    "DTYPES": "kscale.quant",
    "METHODS": "kscale.quant",
    "FAMILIES": "kscale.models",
    "get_family": "kscale.models",
    "resolve_models": "kscale.models",
    "load_model": "kscale.models",
    "EvalSuite": "kscale.evaluate",
    "load_results": "kscale.results",
    "add_delta": "kscale.results",
    "fake_quantize_": "kscale.quant",
    "compile_stats": "kscale.quant",
    "take_compile_seconds": "kscale.quant",
    "fit_law": "kscale.fit",
    "LAWS": "kscale.fit",
    "pareto_frontier": "kscale.pareto",
    "write_report": "kscale.report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"kscale.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | set(_EXPORTS))
