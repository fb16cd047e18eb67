"""Importance matrices for the GGUF types that take one (``imatrix=true``), from calibration text.

llama.cpp's ``imatrix`` tool (``tools/imatrix/imatrix.cpp``, ``collect_imatrix``) runs the
16-bit model over calibration text and, for every weight matrix, accumulates per *input column*
j the sum of x_j^2 over every token that reaches the matrix, then divides by the number of
tokens: ``imatrix[j] = mean_t x_{t,j}^2``. The quantizer weights each column's rounding error
by it. kscale does the same with forward hooks on the quantizable modules, over the windows of a
:class:`kscale.quant.calibration.CalibrationSet` (the calibration machinery GPTQ and AWQ use),
so the calibration columns (``calib_*``) recorded in the row say exactly what was seen.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from kscale.quant.calibration import CalibrationSet, window_tokens
from kscale.quant.filter import ModuleFilter
from kscale.quant.formats import format_of
from kscale.quant.modules import quantizable_modules, weight_matrix

log = logging.getLogger(__name__)

__all__ = ["EVERY_LINEAR", "importance_matrices"]

#: every linear layer, the LM head included: what a per-tensor recipe quantizes
EVERY_LINEAR = ModuleFilter(include=("*",), exclude=())


@torch.no_grad()
def importance_matrices(model: nn.Module, calibration: CalibrationSet | Tensor,
                        module_filter: ModuleFilter | None = None, *,
                        batch_size: int = 8) -> dict[str, Tensor]:
    """``{module name: [in_features] float32}``: the mean of x^2 per input column over every
    calibration token that reaches each quantizable module (llama.cpp's imatrix).

    The model runs unmodified (the 16-bit weights), ``batch_size`` windows at a time, on the
    device of its first parameter.
    """
    tokens = window_tokens(calibration, "imatrix")
    modules = quantizable_modules(model, module_filter)
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, in_features: int):
        def accumulate(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, in_features).double()  # batch-size independent sums
            sq = x.pow(2).sum(dim=0)
            sums[name] = sq if name not in sums else sums[name] + sq
            counts[name] = counts.get(name, 0) + x.shape[0]
        return accumulate

    handles = [m.register_forward_hook(hook(n, int(weight_matrix(m).shape[1]))) for n, m in modules.items()]
    device = next(model.parameters()).device
    try:
        for start in range(0, tokens.shape[0], batch_size):
            model(tokens[start:start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(modules) - set(sums))
    if missing:
        raise ValueError(f"imatrix: no calibration token reached module(s) {', '.join(missing[:3])}")
    return {name: (sums[name] / counts[name]).float().cpu() for name in modules}


def imatrix_for(model: nn.Module, spec, calibration: CalibrationSet | Tensor | None,
                module_filter: ModuleFilter | None) -> Mapping[str, Tensor] | None:
    """The importance matrices a format config asks for (``needs_calibration``), else ``None``.
    A per-tensor recipe (``ftype_*``) quantizes every linear layer, the head included, whatever
    ``module_filter`` says, so it gets the matrices of all of them."""
    if not getattr(spec, "needs_calibration", False):
        return None
    if calibration is None:
        raise ValueError(f"format {spec.format} with imatrix=true needs calibration windows "
                         "(the sweep draws them; in a notebook pass calibration=calibration_tokens(...))")
    if format_of(spec).per_tensor_recipe:
        module_filter = EVERY_LINEAR
    return importance_matrices(model, calibration, module_filter)
