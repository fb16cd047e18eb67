"""NVIDIA NVFP4: E2M1 values, an E4M3 scale per 16 values, one FP32 scale per tensor.

The two-level rule of NVIDIA's recipe as torchao's ``nvfp4_quantize`` implements it, with the
same float32 operations in the same order (so the values agree bit for bit):

    tensor_scale = amax(|W|) / (448 * 6)                   # E4M3 max * E2M1 max
    s            = e4m3(clamp(amax_block / 6 / tensor_scale, 2^-6, 448))   # round to nearest even
    code         = e2m1(clamp(x * ((1 / tensor_scale) / s), -6, 6))       # ties to even
    value        = e2m1_value(code) * (tensor_scale * s)

An all-zero tensor has no amax to scale by; it gets ``tensor_scale = 1`` (every value is 0
whatever the scale). Block scales never go below E4M3's smallest normal, 2^-6 (as in torchao).
"""
from __future__ import annotations

import torch

from kscale.quant.mx.elements import ELEMENTS

__all__ = ["decode", "encode", "tensor_scale_of"]

E4M3_MAX = 448.0
E2M1_MAX = 6.0
E4M3_TINY = 2.0 ** -6


def tensor_scale_of(w: torch.Tensor) -> torch.Tensor:
    """0-dim float32 per-tensor scale ``amax / 2688`` (torchao's ``per_tensor_amax_to_scale``)."""
    lo, hi = torch.aminmax(w.detach())  # one pass, no |w| copy
    scale = torch.maximum(-lo, hi).to(torch.float32) / (E4M3_MAX * E2M1_MAX)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def encode(blocks: torch.Tensor, mx) -> tuple[torch.Tensor, torch.Tensor, float]:
    """float32 [rows, nb, 16] -> (E2M1 codes [rows, nb, 16], E4M3 codes [rows, nb, 1], tensor scale)."""
    tensor_scale = tensor_scale_of(blocks)
    block_scale = blocks.abs().amax(-1, keepdim=True) / E2M1_MAX
    scale = (block_scale / tensor_scale).clamp(E4M3_TINY, E4M3_MAX).to(torch.float8_e4m3fn)
    reciprocal = (1.0 / tensor_scale) / scale.to(torch.float32)
    scaled = (blocks * reciprocal).clamp_(-E2M1_MAX, E2M1_MAX)
    return ELEMENTS["e2m1"].encode(scaled), scale.view(torch.uint8), float(tensor_scale)


def decode(codes: torch.Tensor, scales: torch.Tensor, tensor_scale: float | None, mx) -> torch.Tensor:
    ts = torch.tensor(1.0 if tensor_scale is None else tensor_scale, dtype=torch.float32, device=codes.device)
    return ELEMENTS["e2m1"].decode(codes) * (ts * scales.view(torch.float8_e4m3fn).to(torch.float32))
