"""The microscaling types: one frozen :class:`MXType` per name, the exact storage cost of each.

Two families share the FP4 element and disagree on everything around it:

* ``mxfp4 mxfp6_e2m3 mxfp6_e3m2 mxfp8_e4m3 mxfp8_e5m2 mxint8`` -- OCP MX v1.0: 32 values share one
  E8M0 (power-of-two) scale; ``nvfp4`` -- NVIDIA: 16 values share an E4M3 scale, under one FP32
  scale per tensor. Rounding as torchao's ``to_mx`` / ``to_nvfp4``: nearest, ties to even.
* ``gguf_mxfp4 gguf_nvfp4`` -- llama.cpp's ggml types of the same names: ties go to the smaller
  magnitude, the MXFP4 exponent comes from a float ``log2f``, and ggml's NVFP4 packs four
  16-value sub-blocks into a 64-value block with unsigned, subnormal, half-up E4M3 scales and no
  per-tensor scale. Their bytes are ggml's block layout.

Cost: a row of ``n`` values holds ``n / block_values`` blocks of ``block_values * element_bits +
scale_bits`` bits (``scale_bits`` counts every scale byte in the block: 32 for ggml's NVFP4 with
its four), plus ``tensor_scale_bits`` once per tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from kscale.quant.mx.elements import ELEMENTS
from kscale.registry import Registry

__all__ = ["MX_TYPES", "MXType", "get_mx_type", "storage_bits"]

_FAMILIES = ("ocp", "nvidia", "ggml")


@dataclass(frozen=True)
class MXType:
    """One microscaling type.

    ``block_values``: values per stored block (a row length must be a multiple of it);
    ``element_bits``: bits per value code; ``scale_bits``: bits of all scales in one block;
    ``tensor_scale_bits``: bits stored once per tensor (NVFP4's FP32 scale), else 0;
    ``element``: key of :data:`kscale.quant.mx.elements.ELEMENTS`; ``family``: whose rounding
    (``ocp``, ``nvidia``, ``ggml``); ``scale_values``: values under one scale (ggml NVFP4: 16)."""

    name: str
    block_values: int
    element_bits: int
    scale_bits: int
    tensor_scale_bits: int = 0
    element: str = "e2m1"
    family: str = "ocp"
    scale_values: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if self.family not in _FAMILIES:
            raise ValueError(f"MX family must be one of {_FAMILIES}; got {self.family!r}")
        if self.element not in ELEMENTS or ELEMENTS[self.element].bits != self.element_bits:
            raise ValueError(f"{self.name}: element {self.element!r} does not have {self.element_bits} bits")
        if self.scale_values == 0:
            object.__setattr__(self, "scale_values", self.block_values)
        if self.block_values % self.scale_values or (self.block_values * self.element_bits) % 8:
            raise ValueError(f"{self.name}: a block of {self.block_values} values does not fill whole bytes/scales")

    @property
    def scales_per_block(self) -> int:
        return self.block_values // self.scale_values

    @property
    def block_bytes(self) -> int:
        return (self.block_values * self.element_bits + self.scale_bits) // 8

    @property
    def bits_per_value(self) -> float:
        """Bits per value without the per-tensor scale (mxfp4: 4.25, nvfp4: 4.5)."""
        return self.element_bits + self.scale_bits / self.block_values

    def check_row(self, n_per_row: int) -> None:
        if n_per_row <= 0 or n_per_row % self.block_values:
            raise ValueError(f"{self.name} stores rows in blocks of {self.block_values} values; "
                             f"a row of {n_per_row} is not a multiple (pad it or use another format)")


def _types(*items: MXType) -> dict[str, MXType]:
    return {t.name: t for t in items}


#: every microscaling type by name (the ``format=`` names of issue 18 section 3)
MX_TYPES: dict[str, MXType] = _types(
    MXType("mxfp4", 32, 4, 8, element="e2m1", description="OCP MX FP4 E2M1, E8M0 scale per 32"),
    MXType("mxfp6_e2m3", 32, 6, 8, element="e2m3", description="OCP MX FP6 E2M3, E8M0 scale per 32"),
    MXType("mxfp6_e3m2", 32, 6, 8, element="e3m2", description="OCP MX FP6 E3M2, E8M0 scale per 32"),
    MXType("mxfp8_e4m3", 32, 8, 8, element="e4m3", description="OCP MX FP8 E4M3, E8M0 scale per 32"),
    MXType("mxfp8_e5m2", 32, 8, 8, element="e5m2", description="OCP MX FP8 E5M2, E8M0 scale per 32"),
    MXType("mxint8", 32, 8, 8, element="int8", description="OCP MX INT8 (k/64), E8M0 scale per 32"),
    MXType("nvfp4", 16, 4, 8, 32, element="e2m1", family="nvidia",
           description="NVIDIA NVFP4: E2M1, E4M3 scale per 16, FP32 scale per tensor"),
    MXType("gguf_mxfp4", 32, 4, 8, element="e2m1", family="ggml",
           description="ggml MXFP4 (block_mxfp4): E8M0 scale per 32, ties to the smaller magnitude"),
    MXType("gguf_nvfp4", 64, 4, 32, element="e2m1", family="ggml", scale_values=16,
           description="ggml NVFP4 (block_nvfp4): four UE4M3 scales per 64, no tensor scale"),
)


_REGISTRY: Registry[MXType] = Registry("MX type")
for _mx in MX_TYPES.values():
    _REGISTRY.register(_mx.name, _mx)


def get_mx_type(name: str) -> MXType:
    """The type called ``name``; an unknown name raises a ValueError with a did-you-mean."""
    return _REGISTRY.get(name)


def storage_bits(shape: tuple[int, ...] | list[int], name: str) -> int:
    """Exact bits of a tensor of ``shape`` (blocks along the last axis) in type ``name``:
    codes, every block scale, and the per-tensor scale. Raises ValueError on a row length that
    is not a multiple of the block."""
    mx = get_mx_type(name)
    if len(shape) == 0:
        raise ValueError(f"{name}: a scalar has no rows to block")
    mx.check_row(int(shape[-1]))
    rows = math.prod(int(s) for s in shape[:-1])
    n_blocks = rows * (int(shape[-1]) // mx.block_values)
    return n_blocks * mx.block_bytes * 8 + mx.tensor_scale_bits
