"""OCP microscaling (MX v1.0) and NVFP4 types as formats: ``mxfp4 ... mxint8, nvfp4`` and
ggml's own roundings of two of them, ``gguf_mxfp4`` and ``gguf_nvfp4``.

The kernels are :mod:`kscale.quant.mx` (value-exact with torchao, byte-exact with ggml for the
``gguf_*`` names); this module makes each type a registered format. A row's ``bits`` is the
element width (4 for mxfp4 and nvfp4, 6, 8); ``bits_per_param`` is exact from
``storage_bits`` (block scales and NVFP4's per-tensor FP32 scale included): 4.25 for mxfp4
(an 8-bit E8M0 scale per 32 values), 4.5 for nvfp4 (an E4M3 scale per 16) plus 32 bits per tensor.
These formats take no other axis.

A matrix whose rows are not a whole number of the type's blocks (rows of 48 for mxfp4's 32) is
stored in F16, the rule the GGUF types follow (:func:`kscale.quant.formats.base.rows_fit_blocks`):
left unquantized, counted at 16 bits per weight, packed and exported as F16 values, and listed
as ``f16`` in the row's ``stored_types`` census.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kscale.quant.formats.base import (
    F16,
    F16_BITS,
    NamedTypeConfig,
    StorageFormat,
    TensorCost,
    register_format,
    rows_fit_blocks,
)
from kscale.quant.mx import MX_TYPES, fake_quantize_mx_, quantize_mx, storage_bits

__all__ = ["MXConfig", "MXFormat"]


@dataclass(frozen=True)
class MXConfig(NamedTypeConfig):
    """A microscaling type (no options: block size, element and scale encodings are the type)."""

    def __post_init__(self) -> None:
        if self.name not in MX_TYPES:
            raise ValueError(f"unknown MX type {self.name!r}; types: {', '.join(sorted(MX_TYPES))}")

    @property
    def bits(self) -> int:
        return int(MX_TYPES[self.name].element_bits)


class MXFormat(StorageFormat):
    """One microscaling type (one registered instance per type)."""

    config_class = MXConfig

    def __init__(self, mtype: Any) -> None:
        self.name = mtype.name
        self.mtype = mtype
        self.description = (f"{mtype.name}: blocks of {mtype.block_values} {mtype.element_bits}-bit "
                            f"elements sharing a {mtype.scale_bits}-bit scale")

    def option_names(self) -> list[str]:
        return []

    def _build(self, options):
        return MXConfig(self.name, **options)

    def stored_type(self, shape, config: MXConfig) -> str:
        """This type, or ``f16`` for a matrix whose rows are not whole blocks."""
        return self.name if rows_fit_blocks(int(shape[-1]), self.mtype.block_values) else F16

    def fake_quantize_(self, w: torch.Tensor, config: MXConfig, **_: Any) -> torch.Tensor:
        """Into ``w``'s storage (the fused kernel writes there directly for contiguous float32);
        a matrix stored in F16 is left as it is, like every other 16-bit parameter."""
        if self.stored_type(tuple(w.shape), config) == F16:
            return w
        with torch.no_grad():
            fake_quantize_mx_(w, self.name)
        return w

    def tensor_cost(self, shape, config: MXConfig, n_kept_columns: int = 0) -> TensorCost:
        if n_kept_columns:
            raise ValueError(f"format {self.name} keeps no 16-bit columns (outlier_frac is a "
                             "blockwise option)")
        shape = (int(shape[0]), int(shape[1]))
        if self.stored_type(shape, config) == F16:
            return TensorCost(0, 0, shape[0] * shape[1] * F16_BITS)
        total = int(storage_bits(shape, self.name))
        payload = shape[0] * shape[1] * int(self.mtype.element_bits)
        return TensorCost(payload, total - payload)

    def pack(self, w: torch.Tensor, config: MXConfig) -> bytes:
        """Packed elements, then the block scales, then the FP32 per-tensor scale (NVFP4); for
        the ``gguf_*`` types ggml's block bytes; F16 values for a matrix stored in F16."""
        if self.stored_type(tuple(w.shape), config) == F16:
            return w.detach().to(torch.float16).contiguous().cpu().numpy().tobytes()
        packed = quantize_mx(w.detach().float().contiguous(), self.name)
        if self.name.startswith("gguf_"):
            return bytes(packed.to_bytes())
        parts = [packed.elements.contiguous().cpu().numpy().tobytes(),
                 packed.scales.contiguous().cpu().numpy().tobytes()]
        if packed.tensor_scale is not None:
            parts.append(np.float32(packed.tensor_scale).tobytes())
        return b"".join(parts)


def register_all() -> list[str]:
    """Register every type of :data:`kscale.quant.mx.MX_TYPES`."""
    return [register_format(MXFormat(t)).name for _, t in sorted(MX_TYPES.items())]


register_all()
