"""OCP MX v1.0 quantization: 32 values share an E8M0 scale ``2^(floor(log2 amax) - emax)``.

The scale rule is the spec's (section 6.3) and torchao's ``to_mx`` default (``FLOOR``): the
exponent of the block's largest magnitude, read from its float32 bits, minus the element's
``emax``, clamped to E8M0's range (biased 0..254; 255 = NaN, for a block holding NaN). Values are
divided by the scale (a power of two: exact) and rounded by the element format (nearest, ties to
even, saturating). The decoded value is ``element * 2^(biased - 127)``.

One deliberate difference from torchao: for a block whose scale is E8M0's smallest, 2^-127,
torchao divides by 2^-126 (its ``F32_MIN_NORMAL`` clamp) yet multiplies back by 2^-127; kscale
uses 2^-127 both ways, as the spec does. Only blocks with ``amax < 2^(emax - 126)`` (below
1e-36 for FP4) are affected; no weight matrix has one.
"""
from __future__ import annotations

import torch

from kscale.quant.mx.elements import ELEMENTS
from kscale.quant.mx.types import MXType

__all__ = ["decode", "e8m0_scale", "encode"]

_E8M0_BIAS = 127
_E8M0_NAN = 255


def e8m0_scale(biased: torch.Tensor) -> torch.Tensor:
    """float32 ``2^(biased - 127)`` of E8M0 codes (uint8 or int), NaN for code 255, exact
    (built from the float32 bit pattern; code 0 is the subnormal 2^-127)."""
    b = biased.to(torch.int32)
    bits = torch.where(b > 0, b << 23, torch.full_like(b, 0x00400000))
    scale = bits.view(torch.float32)
    return torch.where(b == _E8M0_NAN, torch.full_like(scale, float("nan")), scale)


def encode(blocks: torch.Tensor, mx: MXType) -> tuple[torch.Tensor, torch.Tensor, None]:
    """float32 [rows, nb, 32] -> (element codes uint8 [rows, nb, 32], E8M0 codes uint8 [rows, nb, 1], None)."""
    element = ELEMENTS[mx.element]
    amax = blocks.abs().amax(-1, keepdim=True)
    exponent_field = (amax.view(torch.int32) >> 23) & 0xFF  # floor(log2 amax) + 127 for normal amax
    biased = (exponent_field - element.emax).clamp_(0, _E8M0_NAN - 1)
    biased = torch.where(torch.isnan(amax), torch.full_like(biased, _E8M0_NAN), biased)
    codes = element.encode(blocks / e8m0_scale(biased))
    return codes, biased.to(torch.uint8), None


def decode(codes: torch.Tensor, scales: torch.Tensor, tensor_scale: float | None, mx: MXType) -> torch.Tensor:
    return ELEMENTS[mx.element].decode(codes) * e8m0_scale(scales)
