"""``METHODS``: quantization methods by name ("rtn" here; "gptq" registers itself in gptq.py).

A method is a callable ``method(model, spec, *, module_filter, calibration, options) -> BitLedger``
that quantizes ``model`` in place. Names are the config option and result-row values.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from kscale.quant.filter import ModuleFilter
from kscale.quant.ledger import BitLedger, ledger_for
from kscale.quant.model import quantize_model
from kscale.quant.spec import QuantSpec
from kscale.registry import Registry

__all__ = ["METHODS", "Method", "apply_method", "rtn"]

Method = Callable[..., BitLedger]
METHODS: Registry[Method] = Registry("method")

_RTN_OPTIONS = ("progress", "keep_columns", "unquantized_param_bits", "outlier_pairs")


@METHODS.register("rtn")
def rtn(
    model: nn.Module,
    spec: QuantSpec,
    *,
    module_filter: ModuleFilter | None = None,
    calibration: Any = None,
    options: Mapping[str, Any] | None = None,
) -> BitLedger:
    """Zero-shot round-to-nearest (the paper's main method, §2): no calibration data used.

    ``options`` may hold ``progress``, ``keep_columns``, ``unquantized_param_bits`` (see
    :func:`quantize_model`) and ``outlier_pairs`` (the family's (producer, consumer) globs):
    with ``spec.outlier_frac > 0`` and no explicit ``keep_columns``, the proxy-quantization
    columns (paper §3) are derived from the pairs and kept in 16 bit.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(_RTN_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown rtn option(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_RTN_OPTIONS)}"
        )
    pairs = options.pop("outlier_pairs", None)
    if "keep_columns" not in options:
        from kscale.quant.outliers import keep_columns_for

        keep = keep_columns_for(model, spec, outlier_pairs=pairs, module_filter=module_filter)
        if keep:
            options["keep_columns"] = keep
    return quantize_model(model, spec, module_filter=module_filter, **options)


def apply_method(
    name: str,
    model: nn.Module,
    spec: QuantSpec,
    *,
    module_filter: ModuleFilter | None = None,
    calibration: Any = None,
    options: Mapping[str, Any] | None = None,
) -> BitLedger:
    """Quantize ``model`` in place with method ``name`` and return its :class:`BitLedger`.

    The 16-bit baseline (``spec.bits == 16``) is the same for every method: nothing is run and
    the 16-bit ledger is returned, so no calibration pass is wasted on it.
    """
    method = METHODS.get(name)  # unknown names raise with did-you-mean
    if spec.is_baseline:
        return ledger_for(model, spec, module_filter)
    return method(model, spec, module_filter=module_filter, calibration=calibration, options=options)
