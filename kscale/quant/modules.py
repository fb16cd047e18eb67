"""Which modules hold quantizable weight matrices, and their [out, in] view.

The study quantizes the linear layers of the transformer blocks (§2). GPT-2 implements them as
``transformers``' ``Conv1D``, whose weight is stored transposed ([in, out]); a quantizer that only
looks for ``nn.Linear`` silently leaves GPT-2 at 16 bits, and one that ignores the transposition
puts its blocks and per-row constants along the wrong axis. Everything here works on the
[out, in] matrix, so blocks, rows and input columns mean the same for both module types.
"""
from __future__ import annotations

import torch
from torch import nn

from kscale.quant.filter import ModuleFilter

try:  # transformers is a dependency, but keep the quantizer importable without it
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = None  # type: ignore[assignment,misc]

__all__ = ["QUANTIZABLE_TYPES", "quantizable_modules", "weight_matrix", "set_weight_matrix"]

QUANTIZABLE_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if Conv1D is not None else ())


def _is_conv1d(module: nn.Module) -> bool:
    return Conv1D is not None and isinstance(module, Conv1D)


def quantizable_modules(
    model: nn.Module, module_filter: ModuleFilter | None = None
) -> dict[str, nn.Module]:
    """``nn.Linear`` and ``Conv1D`` modules selected by ``module_filter`` (default
    :class:`ModuleFilter`: everything except the LM head), in ``named_modules`` order."""
    module_filter = ModuleFilter() if module_filter is None else module_filter
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, QUANTIZABLE_TYPES) and module_filter.matches(name)
    }


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features] (a view; Conv1D's [in, out] is transposed)."""
    w = module.weight
    return w.t() if _is_conv1d(module) else w


def set_weight_matrix(module: nn.Module, W: torch.Tensor) -> None:
    """Write an [out, in] matrix into the module's weight in place (storage layout, dtype kept)."""
    target = module.weight
    expected = tuple(weight_matrix(module).shape)
    if tuple(W.shape) != expected:
        raise ValueError(f"weight matrix must have shape {expected} ([out, in]); got {tuple(W.shape)}")
    with torch.no_grad():
        target.copy_(W.t() if _is_conv1d(module) else W)
