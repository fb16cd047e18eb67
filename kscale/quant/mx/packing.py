"""Bytes of a microscaling tensor: element codes packed per block, scales, the per-tensor scale.

:class:`MXPacked` keeps three parts; ``to_bytes()`` lays them out block by block, each block's
scale bytes first, then its element bytes, then (NVFP4 only) the FP32 tensor scale, little
endian. For the ggml types that is exactly ggml's ``block_mxfp4`` / ``block_nvfp4`` row. Nibble
order within a block: OCP/NVIDIA types pair neighbours (value 2i in the low nibble of byte i, as
torchao's ``pack_uint4``); ggml pairs value j with value j + half of each scale group. FP6 packs
four codes into three bytes, least significant bits first.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kscale.quant.mx.types import MXType

__all__ = ["MXPacked", "pack_codes", "unpack_codes"]


@dataclass(frozen=True)
class MXPacked:
    """A quantized tensor: ``elements`` uint8 [rows, blocks, element bytes per block],
    ``scales`` uint8 [rows, blocks, scale bytes per block], ``tensor_scale`` (FP32) or None."""

    elements: torch.Tensor
    scales: torch.Tensor
    tensor_scale: float | None = None

    def to_bytes(self) -> torch.Tensor:
        """uint8 [n]: per block its scale bytes then its element bytes; then the tensor scale."""
        body = torch.cat([self.scales, self.elements], dim=-1).reshape(-1)
        if self.tensor_scale is None:
            return body
        tail = torch.tensor([self.tensor_scale], dtype=torch.float32).view(torch.uint8)
        return torch.cat([body.cpu(), tail])

    @property
    def nbytes(self) -> int:
        return self.elements.numel() + self.scales.numel() + (0 if self.tensor_scale is None else 4)


def _nibble_pairs(mx: MXType, shape: torch.Size) -> tuple[torch.Size, int]:
    """Codes viewed as [..., groups, 2, half]: lo = [..., 0, :], hi = [..., 1, :] share a byte."""
    if mx.family == "ggml":
        return torch.Size((*shape[:-1], mx.block_values // mx.scale_values, 2, mx.scale_values // 2)), -2
    return torch.Size((*shape[:-1], mx.block_values // 2, 2)), -1


def pack_codes(codes: torch.Tensor, mx: MXType) -> torch.Tensor:
    """uint8 codes [rows, nb, block] -> packed bytes [rows, nb, block * bits / 8]."""
    rows, nb, _ = codes.shape
    if mx.element_bits == 8:
        return codes.contiguous()
    if mx.element_bits == 4:
        view, dim = _nibble_pairs(mx, codes.shape)
        pairs = codes.reshape(view)
        lo, hi = pairs.select(dim, 0), pairs.select(dim, 1)
        return (lo | (hi << 4)).reshape(rows, nb, -1)
    if mx.element_bits == 6:
        quads = codes.reshape(rows, nb, -1, 4).to(torch.int32)
        word = quads[..., 0] | quads[..., 1] << 6 | quads[..., 2] << 12 | quads[..., 3] << 18
        return torch.stack([word & 0xFF, (word >> 8) & 0xFF, word >> 16], -1).to(torch.uint8).reshape(rows, nb, -1)
    raise ValueError(f"{mx.name}: no packing for {mx.element_bits}-bit elements")


def unpack_codes(packed: torch.Tensor, mx: MXType) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: bytes [rows, nb, b] -> codes [rows, nb, block]."""
    rows, nb, _ = packed.shape
    if mx.element_bits == 8:
        return packed
    if mx.element_bits == 4:
        lo, hi = packed & 0x0F, packed >> 4
        if mx.family == "ggml":
            groups = mx.block_values // mx.scale_values
            lo, hi = lo.reshape(rows, nb, groups, -1), hi.reshape(rows, nb, groups, -1)
            return torch.cat([lo, hi], dim=-1).reshape(rows, nb, -1)
        return torch.stack([lo, hi], dim=-1).reshape(rows, nb, -1)
    if mx.element_bits == 6:
        b = packed.reshape(rows, nb, -1, 3).to(torch.int32)
        word = b[..., 0] | b[..., 1] << 8 | b[..., 2] << 16
        return torch.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], -1).to(torch.uint8).reshape(rows, nb, -1)
    raise ValueError(f"{mx.name}: no packing for {mx.element_bits}-bit elements")
