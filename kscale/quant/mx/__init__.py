"""Microscaling formats: OCP MX v1.0, NVIDIA NVFP4 and ggml's MXFP4/NVFP4 (issue 18 section 3).

    quantize_mx(w, name) -> MXPacked          # w: [rows, n] (blocks along the last axis)
    dequantize_mx(packed, name, shape) -> float32 tensor of ``shape``
    fake_quantize_mx(w, name) -> float32      # = dequantize_mx(quantize_mx(w)), without packing
    fake_quantize_mx_(w, name) -> w           # the same, in w's own storage (a sweep's weights)
    storage_bits(shape, name) -> int          # exact: codes + every scale + the tensor scale

Types (:data:`MX_TYPES`): ``mxfp4 mxfp6_e2m3 mxfp6_e3m2 mxfp8_e4m3 mxfp8_e5m2 mxint8 nvfp4`` round as
torchao's ``to_mx`` / ``to_nvfp4`` (value for value, tested); ``gguf_mxfp4 gguf_nvfp4`` round as
ggml's ``quantize_row_*_ref`` and pack into its block bytes (byte for byte, tested). Each family is
one module with ``encode(blocks, mx)`` / ``decode(codes, scales, tensor_scale, mx)``.
"""
from __future__ import annotations

import torch

from kscale.quant.mx import fast, ggml, nvidia, ocp
from kscale.quant.mx.packing import MXPacked, pack_codes, unpack_codes
from kscale.quant.mx.types import MX_TYPES, MXType, get_mx_type, storage_bits

__all__ = ["MX_TYPES", "MXPacked", "MXType", "dequantize_mx", "fake_quantize_mx", "fake_quantize_mx_", "get_mx_type",
           "quantize_mx", "storage_bits"]

#: the rounding rules of each family (``MXType.family``)
CODECS = {"ocp": ocp, "nvidia": nvidia, "ggml": ggml}


def _blocks(w: torch.Tensor, mx: MXType) -> torch.Tensor:
    """float32 [rows, n_blocks, block_values] view of ``w`` (blocks along the last axis)."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise ValueError(f"{mx.name} quantizes floating-point tensors; got {getattr(w, 'dtype', type(w))}")
    if w.dim() == 0:
        raise ValueError(f"{mx.name}: a scalar has no rows to block")
    mx.check_row(w.shape[-1])
    return w.detach().to(torch.float32).reshape(-1, w.shape[-1] // mx.block_values, mx.block_values)


def _encode(w: torch.Tensor, name: str):
    mx = get_mx_type(name)
    return mx, CODECS[mx.family].encode(_blocks(w, mx), mx)


def quantize_mx(w: torch.Tensor, name: str) -> MXPacked:
    """The codes, scales and tensor scale ``name`` stores for ``w`` (see :class:`MXPacked`)."""
    mx, (codes, scales, tensor_scale) = _encode(w, name)
    return MXPacked(pack_codes(codes, mx), scales, tensor_scale)


def dequantize_mx(packed: MXPacked, name: str, shape) -> torch.Tensor:
    """float32 values of ``packed`` in ``shape`` (the quantized tensor's shape)."""
    mx = get_mx_type(name)
    codes = unpack_codes(packed.elements, mx)
    values = CODECS[mx.family].decode(codes, packed.scales, packed.tensor_scale, mx)
    return values.reshape(tuple(shape))


def fake_quantize_mx(w: torch.Tensor, name: str, *, kernel: str = "auto") -> torch.Tensor:
    """float32 ``dequantize_mx(quantize_mx(w, name))`` in ``w``'s shape, without packing bytes.

    ``kernel``: ``auto`` (the fused numba kernel of :mod:`kscale.quant.mx.fast` for float32 CPU
    tensors of the OCP/NVIDIA types, bit-identical to eager; else eager), ``eager``, or ``fast``
    (raises if no fused kernel applies)."""
    if kernel not in ("auto", "eager", "fast"):
        raise ValueError(f"kernel must be auto, eager or fast; got {kernel!r}")
    mx = get_mx_type(name)
    _blocks(w, mx)  # validate before any kernel
    if kernel != "eager":
        out = fast.fake_quantize_fast(w, mx)
        if out is not None:
            return out
        if kernel == "fast":
            raise ValueError(f"no fused kernel for {name} on {w.dtype} {w.device.type} (numba: {fast.available()})")
    mx, (codes, scales, tensor_scale) = _encode(w, name)
    return CODECS[mx.family].decode(codes, scales, tensor_scale, mx).reshape(w.shape)


def fake_quantize_mx_(w: torch.Tensor, name: str, *, kernel: str = "auto") -> torch.Tensor:
    """In place: ``w`` holds ``fake_quantize_mx(w, name)`` afterwards (in its own dtype), written
    straight into its storage by the fused kernel when ``w`` is contiguous float32 on CPU."""
    mx = get_mx_type(name)
    _blocks(w, mx)
    if kernel != "eager" and fast.fake_quantize_fast(w, mx, in_place=True) is not None:
        return w
    with torch.no_grad():
        return w.copy_(fake_quantize_mx(w, name, kernel=kernel))
