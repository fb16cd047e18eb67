"""OCP microscaling (MX v1.0) and NVFP4 types as formats: ``mxfp4 ... mxint8, nvfp4`` and
ggml's own roundings of two of them, ``gguf_mxfp4`` and ``gguf_nvfp4``.

The kernels are :mod:`kscale.quant.mx` (value-exact with torchao, byte-exact with ggml for the
``gguf_*`` names); this module makes each type a registered format. A row's ``bits`` is the
element width (4 for mxfp4 and nvfp4, 6, 8); ``bits_per_param`` is exact from
``storage_bits`` (block scales and NVFP4's per-tensor FP32 scale included): 4.25 for mxfp4
(an 8-bit E8M0 scale per 32 values), 4.5 for nvfp4 (an E4M3 scale per 16) plus 32 bits per tensor.
These formats take no other axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kscale.quant.formats.base import NamedTypeConfig, StorageFormat, TensorCost, kernel_package, register_format

__all__ = ["MXConfig", "MXFormat"]


def _types() -> dict[str, Any]:
    from kscale.quant.mx import MX_TYPES

    return MX_TYPES


@dataclass(frozen=True)
class MXConfig(NamedTypeConfig):
    """A microscaling type (no options: block size, element and scale encodings are the type)."""

    def __post_init__(self) -> None:
        if self.name not in _types():
            raise ValueError(f"unknown MX type {self.name!r}; types: {', '.join(sorted(_types()))}")

    @property
    def bits(self) -> int:
        return int(_types()[self.name].element_bits)


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

    def fake_quantize_(self, w: torch.Tensor, config: MXConfig, **_: Any) -> torch.Tensor:
        """Into ``w``'s storage (the fused kernel writes there directly for contiguous float32)."""
        from kscale.quant.mx import fake_quantize_mx_

        with torch.no_grad():
            fake_quantize_mx_(w, self.name)
        return w

    def tensor_cost(self, shape, config: MXConfig, n_kept_columns: int = 0) -> TensorCost:
        from kscale.quant.mx import storage_bits

        if n_kept_columns:
            raise ValueError(f"format {self.name} keeps no 16-bit columns (outlier_frac is a "
                             "blockwise option)")
        shape = (int(shape[0]), int(shape[1]))
        total = int(storage_bits(shape, self.name))
        payload = shape[0] * shape[1] * int(self.mtype.element_bits)
        return TensorCost(payload, total - payload)

    def pack(self, w: torch.Tensor, config: MXConfig) -> bytes:
        """Packed elements, then the block scales, then the FP32 per-tensor scale (NVFP4); for
        the ``gguf_*`` types ggml's block bytes."""
        import numpy as np

        from kscale.quant.mx import quantize_mx

        packed = quantize_mx(w.detach().float().contiguous(), self.name)
        if self.name.startswith("gguf_"):
            return bytes(packed.to_bytes())
        parts = [packed.elements.contiguous().cpu().numpy().tobytes(),
                 packed.scales.contiguous().cpu().numpy().tobytes()]
        if packed.tensor_scale is not None:
            parts.append(np.float32(packed.tensor_scale).tobytes())
        return b"".join(parts)


def register_all() -> list[str]:
    """Register every type of :data:`kscale.quant.mx.MX_TYPES` (none if that package is missing
    from this checkout)."""
    if kernel_package("kscale.quant.mx") is None:
        return []
    types = _types()
    return [register_format(MXFormat(t)).name for _, t in sorted(types.items())]


register_all()
