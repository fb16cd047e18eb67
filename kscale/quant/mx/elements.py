"""Element formats of the microscaling types: how one scaled value becomes a code and back.

OCP MX v1.0 (section 5.3) defines the elements FP4 E2M1, FP6 E2M3 / E3M2, FP8 E4M3 / E5M2 and
INT8; NVFP4 uses E2M1 too. All round to nearest, ties to even, and saturate at the largest
finite magnitude (the spec's "convert with saturation"; NaN/Inf have no code in FP4/FP6).

* FP4/FP6 have at most 32 magnitudes, so a code is found by ``bucketize`` over the midpoints of
  the sorted grid. A tie sits exactly on a midpoint; it goes to the even code, so the boundaries
  whose upper neighbour is even are moved one float below the midpoint (then a value equal to
  the midpoint counts as above it). Codes are ``sign << (e+m) | e_field << m | m_field``; the
  magnitudes in code order are the grid itself.
* FP8 uses torch's own cast (round to nearest even), after the saturating clamp, as torchao does.
* INT8 elements are ``k / 64`` with ``|k| <= 127`` (two's complement, implicit scale 2^-6).

``emax`` is the exponent of the largest power of two an element reaches: the E8M0 scale of a
block is ``2^(floor(log2 amax) - emax)`` (MX v1.0, section 6.3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ELEMENTS", "ElementFormat", "FloatElement", "IntElement"]


class ElementFormat:
    """One element format: ``encode`` scaled float32 values into uint8 codes, ``decode`` back."""

    name: str
    bits: int
    emax: int
    max_value: float

    def encode(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class FloatElement(ElementFormat):
    """A sign-exponent-mantissa float without Inf/NaN codes (FP4, FP6) or torch's FP8 dtype."""

    name: str
    ebits: int
    mbits: int
    torch_dtype: torch.dtype | None = None  # FP8: cast with torch instead of the grid search

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def bias(self) -> int:
        return 2 ** (self.ebits - 1) - 1

    @property
    def max_value(self) -> float:
        if self.torch_dtype is not None:
            return float(torch.finfo(self.torch_dtype).max)
        return float(self.magnitudes()[-1])

    @property
    def emax(self) -> int:
        return math.floor(math.log2(self.max_value))

    def magnitudes(self) -> torch.Tensor:
        """float32 [2^(e+m)]: the magnitude of each unsigned code, ascending (FP4/FP6 only)."""
        codes = torch.arange(2 ** (self.ebits + self.mbits), dtype=torch.float64)
        e, m = torch.div(codes, 2 ** self.mbits, rounding_mode="floor"), codes % 2 ** self.mbits
        sub = m * 2.0 ** (1 - self.bias - self.mbits)
        normal = (1 + m / 2 ** self.mbits) * torch.pow(2.0, e - self.bias)
        return torch.where(e == 0, sub, normal).to(torch.float32)

    def boundaries(self) -> torch.Tensor:
        """``bucketize`` boundaries giving round-to-nearest-even codes (see module docstring)."""
        grid = self.magnitudes()
        mids = (grid[:-1] + grid[1:]) / 2  # exact: few significant bits
        upper_even = torch.arange(1, len(grid)) % 2 == 0
        below = torch.nextafter(mids, torch.full_like(mids, -math.inf))
        return torch.where(upper_even, below, mids)

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """uint8 codes of float32 ``y`` (already divided by its scale), saturating."""
        if self.torch_dtype is not None:
            top = self.max_value
            return y.clamp(-top, top).to(self.torch_dtype).view(torch.uint8)
        magnitude = torch.bucketize(y.abs(), self.boundaries().to(y.device)).to(torch.uint8)
        sign = torch.signbit(y).to(torch.uint8) << (self.ebits + self.mbits)
        return magnitude | sign

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        if self.torch_dtype is not None:
            return codes.view(self.torch_dtype).to(torch.float32)
        grid = self.magnitudes().to(codes.device)
        return torch.cat([grid, -grid])[codes.long()]


@dataclass(frozen=True)
class IntElement(ElementFormat):
    """MX INT8: ``k / 2^fraction_bits``, ``|k| <= 2^(bits-1) - 1``, round half to even."""

    name: str = "int8"
    bits: int = 8
    fraction_bits: int = 6

    @property
    def max_value(self) -> float:
        return (2 ** (self.bits - 1) - 1) / 2 ** self.fraction_bits

    @property
    def emax(self) -> int:
        return math.floor(math.log2(self.max_value))

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        top = 2 ** (self.bits - 1) - 1
        k = torch.round(y * 2.0 ** self.fraction_bits).clamp_(-top, top)  # torch.round: half to even
        return k.to(torch.int8).view(torch.uint8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.view(torch.int8).to(torch.float32) / 2.0 ** self.fraction_bits


#: element formats by name (OCP MX v1.0 table 1; E4M3 is the "fn" variant without Inf)
ELEMENTS: dict[str, ElementFormat] = {
    "e2m1": FloatElement("e2m1", 2, 1),
    "e2m3": FloatElement("e2m3", 2, 3),
    "e3m2": FloatElement("e3m2", 3, 2),
    "e4m3": FloatElement("e4m3", 4, 3, torch.float8_e4m3fn),
    "e5m2": FloatElement("e5m2", 5, 2, torch.float8_e5m2),
    "int8": IntElement(),
}
