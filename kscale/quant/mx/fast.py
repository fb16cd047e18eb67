"""Fused numba kernels for :func:`kscale.quant.mx.fake_quantize_mx` on float32 CPU tensors.

The eager path (``ocp.py``, ``nvidia.py``, ``ggml.py``) makes ~10 passes over the tensor (``abs``, block
max, divide, ``bucketize``, table lookups, multiply), each a full read and write: ~100x the
memory floor (an ``out.copy_``). Here one pass per block does it all: the block maximum as the
integer max of the bit patterns (sign cleared: exactly the float max), then each value rounded
to the element with plain float32 arithmetic, no table:

* a float element (E2M1 ... E5M2): saturate at the largest magnitude; below the smallest normal
  round on a fixed grid with ``(a + C) - C`` (C's ulp is the subnormal step, so the FPU's round
  to nearest even does it); in the normal range round the float32 mantissa to ``m`` bits on the
  bit pattern, ties to even (``+ (half - 1) + lowest kept bit``, then mask);
* INT8: ``k = rint(clamp(y * 64, +-127))`` with the same ``(v + 1.5*2^23) - 1.5*2^23`` trick;
* ggml's FP4 (``gguf_mxfp4``/``gguf_nvfp4``): the scale as ``ggml.py`` derives it, then the code as
  the count of midpoints ``m * d`` strictly below ``|x|`` (exact products; ties to the smaller
  magnitude), zero as code 0.

Every operation is the eager path's, in the same order and precision (float32; no fast-math), so
the results are bit-identical, including the sign of zero (tested against the eager path).
Without numba, or for other dtypes/devices, the eager path runs.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from kscale.quant.mx.elements import ELEMENTS, FloatElement
from kscale.quant.mx.ggml import _MIDPOINTS, KVALUES
from kscale.quant.mx.nvidia import tensor_scale_of
from kscale.quant.mx.types import MXType

__all__ = ["available", "fake_quantize_fast"]

try:  # pragma: no cover - depends on the environment
    from numba import njit, prange

    from kscale.quant._numba import _bits, _float
except Exception:  # ImportError, a numba/numpy mismatch, or no numba helpers
    njit = None

if njit is not None:

    @njit(inline="always")
    def _round_float(a, maxv, sub_limit, magic, shift):
        """Round a >= 0 (float32) to the element grid, nearest even, saturating at ``maxv``."""
        a = min(a, maxv)
        if a < sub_limit:  # element subnormals: a fixed step, rounded by the FPU
            return (a + magic) - magic
        u = _bits(a)
        half = (np.uint32(1) << np.uint32(shift - 1)) - np.uint32(1)
        u = u + half + ((u >> np.uint32(shift)) & np.uint32(1))
        return _float(u & ~((np.uint32(1) << np.uint32(shift)) - np.uint32(1)))

    @njit(inline="always")
    def _e8m0(biased):
        """2^(biased - 127) as float32 (biased 0: the subnormal 2^-127)."""
        if biased > 0:
            return _float(np.uint32(biased) << np.uint32(23))
        return _float(np.uint32(0x00400000))

    @njit(parallel=True, cache=True, boundscheck=False)
    def _ocp_blocks(x, xu, out, emax, is_int, maxv, sub_limit, magic, shift):
        rint_magic = np.float32(12582912.0)  # 1.5 * 2^23
        for b in prange(x.shape[0]):
            m = np.uint32(0)
            for i in range(x.shape[1]):
                m = max(m, xu[b, i] & np.uint32(0x7FFFFFFF))
            if m > np.uint32(0x7F800000):  # a NaN in the block: E8M0 code 255
                for i in range(x.shape[1]):
                    out[b, i] = np.float32(np.nan)
                continue
            biased = min(max(np.int32(m >> np.uint32(23)) - emax, 0), 254)
            scale = _e8m0(biased)
            for i in range(x.shape[1]):
                y = x[b, i] / scale
                if is_int:
                    v = min(max(y * np.float32(64.0), np.float32(-127.0)), np.float32(127.0))
                    k = (v + rint_magic) - rint_magic
                    out[b, i] = (k / np.float32(64.0)) * scale
                else:
                    r = _round_float(abs(y), maxv, sub_limit, magic, shift)
                    if xu[b, i] & np.uint32(0x80000000):
                        r = -r
                    out[b, i] = r * scale

    @njit(parallel=True, cache=True, boundscheck=False)
    def _nvfp4_blocks(x, xu, out, tensor_scale):
        e4_sub, e4_magic, e4_shift = np.float32(2.0 ** -6), np.float32(2.0 ** -9 * 2 ** 23), 20
        f4_sub, f4_magic, f4_shift = np.float32(1.0), np.float32(0.5 * 2 ** 23), 22
        inv_ts = np.float32(1.0) / tensor_scale
        for b in prange(x.shape[0]):
            m = np.uint32(0)
            for i in range(x.shape[1]):
                m = max(m, xu[b, i] & np.uint32(0x7FFFFFFF))
            q = (_float(m) / np.float32(6.0)) / tensor_scale
            q = min(max(q, np.float32(2.0 ** -6)), np.float32(448.0))
            s = _round_float(q, np.float32(448.0), e4_sub, e4_magic, e4_shift)  # the E4M3 block scale
            recip = inv_ts / s
            step = tensor_scale * s
            for i in range(x.shape[1]):
                y = min(max(x[b, i] * recip, np.float32(-6.0)), np.float32(6.0))
                r = _round_float(abs(y), np.float32(6.0), f4_sub, f4_magic, f4_shift)
                if _bits(y) & np.uint32(0x80000000):
                    r = -r
                out[b, i] = r * step


    @njit(inline="always")
    def _ue4m3_code(x):
        """``ggml_fp32_to_ue4m3`` (see ggml.py)."""
        if not x > np.float32(0.0):
            return 0
        x = min(x, np.float32(448.0))
        u = _bits(x)
        exponent = np.int32((u >> np.uint32(23)) & np.uint32(0xFF)) - 120
        if exponent <= 0:
            man = int(x * np.float32(512.0) + np.float32(0.5))
            return min(man, 7) if man >= 1 else 0
        if exponent >= 15:
            return 0x7E
        man = np.int32((u >> np.uint32(20)) & np.uint32(7)) + np.int32((u >> np.uint32(19)) & np.uint32(1))
        if man > 7:
            man = 0
            exponent += 1
            if exponent >= 15:
                return 0x7E
        return (exponent << 3) | man

    @njit(inline="always")
    def _ue4m3_half(code):
        """``ggml_ue4m3_to_fp32``: half the unsigned E4M3 value."""
        if code == 0 or code == 0x7F:
            return np.float32(0.0)
        exponent, man = (code >> 3) & 0xF, np.float32(code & 0x7)
        if exponent == 0:
            raw = man * np.float32(2.0 ** -9)
        else:
            raw = (np.float32(1.0) + man / np.float32(8.0)) * _float(np.uint32(exponent - 7 + 127) << np.uint32(23))
        return raw * np.float32(0.5)

    @njit(parallel=True, cache=True, boundscheck=False)
    def _ggml_fp4_blocks(x, xu, out, nvfp4, kvalues, mids):
        """ggml's MXFP4 (rows of 32, E8M0 half scale from log2f) or NVFP4 (rows of 16, UE4M3):
        nearest kvalue * d, ties to the smaller magnitude, zero as code 0 (+0.0)."""
        for b in prange(x.shape[0]):
            m = np.uint32(0)
            for i in range(x.shape[1]):
                m = max(m, xu[b, i] & np.uint32(0x7FFFFFFF))
            amax = _float(m)
            if nvfp4:
                d = _ue4m3_half(_ue4m3_code(amax / np.float32(6.0)))
            else:
                e = 0
                if amax > np.float32(0.0):
                    log2f = np.float32(math.log2(np.float64(amax)))
                    e = min(max(min(max(int(math.floor(log2f)), -127), 127) + 125, 0), 254)
                if e >= 2:
                    d = _float(np.uint32(e - 1) << np.uint32(23))
                else:
                    d = _float(np.uint32(0x00200000) << np.uint32(e))
            for i in range(x.shape[1]):
                v = x[b, i]
                a = abs(v)
                code = 0
                if d > np.float32(0.0):  # a zero scale: every distance ties, ggml keeps index 0
                    for j in range(7):
                        if a > mids[j] * d:
                            code = j + 1
                if code > 0 and v < np.float32(0.0):
                    code += 8
                out[b, i] = kvalues[code] * d


def available() -> bool:
    return njit is not None


def _element_constants(element: FloatElement) -> tuple[np.float32, np.float32, np.float32, int]:
    """(max, smallest normal, subnormal rounding constant, mantissa bits dropped) of an element."""
    min_normal = 2.0 ** (1 - element.bias)
    step = 2.0 ** (1 - element.bias - element.mbits)
    return (np.float32(element.max_value), np.float32(min_normal), np.float32(step * 2 ** 23),
            23 - element.mbits)


def fake_quantize_fast(w: torch.Tensor, mx: MXType, *, in_place: bool = False) -> torch.Tensor | None:
    """float32 fake-quantized ``w`` (float32, CPU), or None if no kernel fits. ``in_place``
    (``w`` contiguous): written into ``w``'s own storage (each block is read whole before any
    of it is written), the way a sweep quantizes a loaded model's weights."""
    if njit is None or w.dtype != torch.float32 or w.device.type != "cpu":
        return None
    if in_place and not w.is_contiguous():
        return None
    x = w.detach().contiguous().reshape(-1, mx.block_values).numpy()
    out = x if in_place else np.empty_like(x)
    xu = x.view(np.uint32)
    if mx.family == "ggml":
        x = x.reshape(-1, mx.scale_values)
        out = out.reshape(-1, mx.scale_values)
        _ggml_fp4_blocks(x, x.view(np.uint32), out, mx.scales_per_block > 1, np.array(KVALUES, dtype=np.float32),
                         np.array(_MIDPOINTS, dtype=np.float32))
    elif mx.family == "nvidia":
        _nvfp4_blocks(x, xu, out, np.float32(tensor_scale_of(w).item()))
    else:
        element = ELEMENTS[mx.element]
        if isinstance(element, FloatElement):
            maxv, sub_limit, magic, shift = _element_constants(element)
            _ocp_blocks(x, xu, out, element.emax, False, maxv, sub_limit, magic, shift)
        else:
            _ocp_blocks(x, xu, out, element.emax, True, np.float32(0), np.float32(0), np.float32(0), 1)
    return w if in_place else torch.from_numpy(out).reshape(w.shape)
