"""Fused numba paths: ggml's reference quantizers q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k writing ggml's
bytes, and gguf's dequantizers of those types, each in one pass over the tensor.

Same float32 operations in the same order as the torch kernels (which stay the reference for other
devices and for ``search.ENGINE = "torch"``); fp16 rounding and bit patterns are done exactly on the
float32 bits (numba has no CPU float16). Bit-identical to ggml and gguf (tested).
"""
from __future__ import annotations

import numpy as np

from ._numba_search import AVAILABLE

if AVAILABLE:
    from numba import njit, prange

    from ._numba_search import _clamp, _first_abs_max, _qkx_group

    @njit(cache=True, inline="always")
    def fp16_round(v):
        """float32 -> nearest fp16 value (ties to even, overflow to inf) as float32."""
        a = abs(v)
        if a >= np.float32(65520.0):
            return np.float32(np.inf) if v > 0 else np.float32(-np.inf)
        if a < np.float32(6.103515625e-05):  # subnormal fp16: multiples of 2^-24
            return np.float32(np.rint(v * np.float32(16777216.0)) * np.float32(5.9604644775390625e-08))
        bits = np.array([v], dtype=np.float32).view(np.uint32)[0]
        bits = (bits + np.uint32(0xFFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
        return np.array([bits], dtype=np.uint32).view(np.float32)[0]

    @njit(cache=True, inline="always")
    def _fp16_bits(v):
        """An fp16-representable float32 (see :func:`fp16_round`) -> its fp16 bit pattern."""
        bits = np.array([v], dtype=np.float32).view(np.uint32)[0]
        sign = (bits >> np.uint32(16)) & np.uint32(0x8000)
        a = abs(v)
        if a == np.float32(np.inf):
            return sign | np.uint32(0x7C00)
        if a < np.float32(6.103515625e-05):
            return sign | np.uint32(np.rint(a * np.float32(16777216.0)))
        exponent = ((bits >> np.uint32(23)) & np.uint32(0xFF)) - np.uint32(112)
        return sign | (exponent << np.uint32(10)) | ((bits >> np.uint32(13)) & np.uint32(0x3FF))

    @njit(cache=True, inline="always")
    def _fp16_value(lo, hi):
        """Two little-endian bytes of an fp16 -> its float32 value (exact)."""
        h = np.uint32(lo) | (np.uint32(hi) << np.uint32(8))
        sign = np.float32(-1.0) if h & np.uint32(0x8000) else np.float32(1.0)
        exponent = (h >> np.uint32(10)) & np.uint32(0x1F)
        mantissa = h & np.uint32(0x3FF)
        if exponent == 0:
            return sign * (np.float32(mantissa) * np.float32(5.9604644775390625e-08))
        if exponent == 31:
            return sign * np.float32(np.inf) if mantissa == 0 else np.float32(np.nan)
        bits = ((h & np.uint32(0x8000)) << np.uint32(16)) | ((exponent + np.uint32(112)) << np.uint32(23)) | (
            mantissa << np.uint32(13))
        return np.array([bits], dtype=np.uint32).view(np.float32)[0]

    @njit(cache=True, inline="always")
    def _put_fp16(out, b, at, v):
        h = _fp16_bits(fp16_round(v))
        out[b, at] = np.uint8(h & np.uint32(0xFF))
        out[b, at + 1] = np.uint8(h >> np.uint32(8))

    @njit(cache=True, parallel=True)
    def q45k_ref(x, nmax, out):  # pragma: no cover - compiled
        """``quantize_row_q4_K_ref`` (nmax 15) / ``quantize_row_q5_K_ref`` (31) of super-blocks [nsb, 256]
        written as ggml's blocks into ``out`` [nsb, 144 | 176] (uint8)."""
        nsb = x.shape[0]
        zero = np.float32(0.0)
        rmin = np.float32(-1.0) if nmax == 15 else np.float32(-0.5)
        nstep = 20 if nmax == 15 else 15
        qs_at = 16 if nmax == 15 else 48
        for b in prange(nsb):
            L = np.empty(32, np.float32)
            laux = np.empty(32, np.float32)
            w = np.empty(32, np.float32)
            scales = np.empty(8, np.float32)
            mins = np.empty(8, np.float32)
            codes = np.empty(256, np.uint8)
            max_scale = zero
            max_min = zero
            for j in range(8):
                xs = x[b, 32 * j:32 * j + 32]
                sum_x2 = zero
                for l in range(32):
                    sum_x2 += xs[l] * xs[l]
                av_x = np.sqrt(sum_x2 / np.float32(32.0))
                for l in range(32):
                    w[l] = av_x + abs(xs[l])
                scales[j], mins[j] = _qkx_group(xs, w, L, laux, nmax, rmin, np.float32(0.1), nstep, False)
                for l in range(32):
                    codes[32 * j + l] = np.uint8(L[l])
                if scales[j] > max_scale:
                    max_scale = scales[j]
                if mins[j] > max_min:
                    max_min = mins[j]
            inv_scale = np.float32(63.0) / max_scale if max_scale > zero else zero
            inv_min = np.float32(63.0) / max_min if max_min > zero else zero
            d16 = fp16_round(max_scale / np.float32(63.0))
            dmin16 = fp16_round(max_min / np.float32(63.0))
            _put_fp16(out, b, 0, d16)
            _put_fp16(out, b, 2, dmin16)
            for k in range(4, qs_at):
                out[b, k] = 0
            for j in range(8):
                ls = min(63, np.int64(np.rint(inv_scale * scales[j])) & 255)
                lm = min(63, np.int64(np.rint(inv_min * mins[j])) & 255)
                if j < 4:
                    out[b, 4 + j] = ls
                    out[b, 8 + j] = lm
                else:
                    out[b, 8 + j] = (ls & 0xF) | ((lm & 0xF) << 4)
                    out[b, j] |= (ls >> 4) << 6
                    out[b, 4 + j] |= (lm >> 4) << 6
                dj = d16 * np.float32(ls)
                if dj == zero:
                    continue
                dm = dmin16 * np.float32(lm)
                for l in range(32):
                    codes[32 * j + l] = np.uint8(_clamp(np.rint((x[b, 32 * j + l] + dm) / dj), zero,
                                                        np.float32(nmax)))
            for half in range(4):  # sub-blocks 2h (low nibbles) and 2h + 1 (high)
                for l in range(32):
                    lo = codes[64 * half + l]
                    hi = codes[64 * half + 32 + l]
                    if nmax == 31:
                        out[b, 16 + l] |= ((lo >> 4) << (2 * half)) | ((hi >> 4) << (2 * half + 1))
                    out[b, qs_at + 32 * half + l] = (lo & 0xF) | ((hi & 0xF) << 4)

    @njit(cache=True, parallel=True)
    def dequantize_q45k(data, nmax, out):  # pragma: no cover - compiled
        """gguf's Q4_K / Q5_K dequantization, value for value, of blocks [nsb, bytes] into out [nsb, 256]."""
        nsb = data.shape[0]
        qs_at = 16 if nmax == 15 else 48
        for b in prange(nsb):
            d = _fp16_value(data[b, 0], data[b, 1])
            dmin = _fp16_value(data[b, 2], data[b, 3])
            for j in range(8):
                if j < 4:
                    sc = data[b, 4 + j] & 63
                    m = data[b, 8 + j] & 63
                else:
                    sc = (data[b, 8 + j] & 0xF) | ((data[b, j] >> 6) << 4)
                    m = (data[b, 8 + j] >> 4) | ((data[b, 4 + j] >> 6) << 4)
                dl = d * np.float32(sc)
                ml = dmin * np.float32(m)
                half = j // 2
                shift = 4 * (j % 2)
                for l in range(32):
                    q = (data[b, qs_at + 32 * half + l] >> shift) & 0xF
                    if nmax == 31:
                        q |= ((data[b, 16 + l] >> j) & 1) << 4
                    out[b, 32 * j + l] = dl * np.float32(q) - ml

    @njit(cache=True, parallel=True)
    def q8_0_ref(x, out):  # pragma: no cover - compiled
        """``quantize_row_q8_0_ref`` of blocks [nb, 32] written as ggml's blocks into ``out`` [nb, 34]."""
        nb = x.shape[0]
        zero = np.float32(0.0)
        half = np.float32(0.5)
        for b in prange(nb):
            amax = zero
            for j in range(32):
                amax = max(amax, abs(x[b, j]))
            d = amax / np.float32(127.0)
            inv = np.float32(1.0) / d if d != zero else zero
            _put_fp16(out, b, 0, d)
            for j in range(32):
                v = x[b, j] * inv
                t = np.trunc(v)
                if abs(v - t) >= half:  # roundf: halves away from zero
                    t += np.float32(1.0) if v > zero else np.float32(-1.0)
                out[b, 2 + j] = np.uint8((np.int64(t) + 256) & 255)

    @njit(cache=True, parallel=True)
    def dequantize_q8_0(data, out):  # pragma: no cover - compiled
        """gguf's Q8_0 dequantization of blocks [nb, 34] into out [nb, 32]."""
        for b in prange(data.shape[0]):
            d = _fp16_value(data[b, 0], data[b, 1])
            for j in range(32):
                code = np.int64(data[b, 2 + j])
                out[b, j] = np.float32(code - 256 if code > 127 else code) * d


    @njit(cache=True, parallel=True)
    def legacy_ref(x, bits, affine, out):  # pragma: no cover - compiled
        """``quantize_row_q{4,5}_{0,1}_ref`` of blocks [nb, 32] written as ggml's blocks into ``out``."""
        nb = x.shape[0]
        zero = np.float32(0.0)
        top = (1 << bits) - 1
        qh_at = 4 if affine else 2
        qs_at = qh_at + (4 if bits == 5 else 0)
        for b in prange(nb):
            codes = np.empty(32, np.int64)
            if affine:
                mn = np.float32(np.inf)
                mx = np.float32(-np.inf)
                for j in range(32):
                    if x[b, j] < mn:
                        mn = x[b, j]
                    if x[b, j] > mx:
                        mx = x[b, j]
                d = (mx - mn) / np.float32(top)
                inv = np.float32(1.0) / d if d != zero else zero
                _put_fp16(out, b, 0, d)
                _put_fp16(out, b, 2, mn)
                for j in range(32):
                    c = np.int64(np.trunc((x[b, j] - mn) * inv + np.float32(0.5)))
                    codes[j] = min(15, c) if bits == 4 else c
            else:
                levels = np.float32(1 << (bits - 1))
                amax, vmax = _first_abs_max(x[b])
                d = vmax / -levels
                inv = np.float32(1.0) / d if d != zero else zero
                _put_fp16(out, b, 0, d)
                for j in range(32):
                    codes[j] = min(top, np.int64(np.trunc(x[b, j] * inv + (levels + np.float32(0.5)))))
            qh = 0
            for j in range(16):
                out[b, qs_at + j] = (codes[j] & 0xF) | ((codes[j + 16] & 0xF) << 4)
            for j in range(32):
                qh |= ((codes[j] >> 4) & 1) << j
            if bits == 5:
                for k in range(4):
                    out[b, qh_at + k] = (qh >> (8 * k)) & 0xFF

    @njit(cache=True, parallel=True)
    def dequantize_legacy(data, bits, affine, out):  # pragma: no cover - compiled
        """gguf's Q4_0/Q4_1/Q5_0/Q5_1 dequantization of blocks [nb, bytes] into out [nb, 32]."""
        qh_at = 4 if affine else 2
        qs_at = qh_at + (4 if bits == 5 else 0)
        offset = 0 if affine else 1 << (bits - 1)
        for b in prange(data.shape[0]):
            d = _fp16_value(data[b, 0], data[b, 1])
            m = _fp16_value(data[b, 2], data[b, 3]) if affine else np.float32(0.0)
            qh = 0
            if bits == 5:
                for k in range(4):
                    qh |= np.int64(data[b, qh_at + k]) << (8 * k)
            for j in range(32):
                q = (np.int64(data[b, qs_at + j % 16]) >> (4 * (j // 16))) & 0xF
                if bits == 5:
                    q |= ((qh >> j) & 1) << 4
                if affine:
                    out[b, j] = d * np.float32(q) + m
                else:
                    out[b, j] = d * np.float32(q - offset)
