"""Numba versions of the three expensive scale searches, for float32 CPU tensors (same bits as torch).

The torch searches in :mod:`.search` step through a group's positions and candidates with whole
tensors; each step is a handful of tiny elementwise kernels, so a 4096×4096 q4_k quantization pays
~10^4 kernel launches per chunk and ran at ~4x ggml's C. Written as plain loops over one group
(``prange`` over groups), LLVM runs the same float32 operations in the same order as ggml's C: no
fast-math, so no reassociation and no FMA contraction; every integer is turned into float32 before
it meets a float (numba would otherwise promote to float64). Results are bit-identical to the
torch searches (tested) and to ggml.

Optional: without numba the torch searches run.
"""
from __future__ import annotations

import numpy as np

try:  # pragma: no cover - exercised by whichever the environment has
    from numba import njit, prange
except Exception:  # ImportError, or a numba/numpy version mismatch
    njit = None

AVAILABLE = njit is not None
_EPS = np.float32(1e-15)
_KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)

if AVAILABLE:

    @njit(cache=True, inline="always")
    def _clamp(v, lo, hi):
        return lo if v < lo else (hi if v > hi else v)

    @njit(cache=True, inline="always")
    def _qkx_group(x, w, L, laux, nmax, rmin, rdelta, nstep, use_mad):
        """One group of ``make_qkx2/3_quants``: codes into L, returns (scale, -min)."""
        n = x.shape[0]
        fmax = np.float32(nmax)
        zero = np.float32(0.0)
        mn = x[0]
        mx = x[0]
        sum_w = w[0]
        sum_x = sum_w * x[0]
        for i in range(1, n):
            if x[i] < mn:
                mn = x[i]
            if x[i] > mx:
                mx = x[i]
            sum_w += w[i]
            sum_x += w[i] * x[i]
        if mn > zero:
            mn = zero
        if mx == mn:
            for i in range(n):
                L[i] = zero
            return zero, -mn
        iscale = fmax / (mx - mn)
        scale = np.float32(1.0) / iscale
        best = zero
        for i in range(n):
            l = _clamp(np.rint(iscale * (x[i] - mn)), zero, fmax)
            L[i] = l
            diff = scale * l + mn - x[i]
            diff = abs(diff) if use_mad else diff * diff
            best += w[i] * diff
        for step in range(nstep + 1):
            iscale = (rmin + rdelta * np.float32(step) + fmax) / (mx - mn)
            sum_l = zero
            sum_l2 = zero
            sum_xl = zero
            for i in range(n):
                l = _clamp(np.rint(iscale * (x[i] - mn)), zero, fmax)
                laux[i] = l
                wl = w[i] * l
                sum_l += wl
                sum_l2 += wl * l
                sum_xl += wl * x[i]
            D = sum_w * sum_l2 - sum_l * sum_l
            if D > zero:
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
                if this_min > zero:
                    this_min = zero
                    this_scale = sum_xl / sum_l2
                cur = zero
                for i in range(n):
                    diff = this_scale * laux[i] + this_min - x[i]
                    diff = abs(diff) if use_mad else diff * diff
                    cur += w[i] * diff
                if cur < best:
                    for i in range(n):
                        L[i] = laux[i]
                    best = cur
                    scale = this_scale
                    mn = this_min
        return scale, -mn

    @njit(cache=True, parallel=True)
    def min_scale_search(X, W, nmax, rmin, rdelta, nstep, use_mad):  # pragma: no cover - compiled
        """``make_qkx2/3_quants`` on position-major X, W [n, G] -> (scale, -min, L [n, G])."""
        n, G = X.shape
        scale_out = np.empty(G, np.float32)
        negmin_out = np.empty(G, np.float32)
        L = np.zeros((n, G), np.float32)
        for g in prange(G):
            lg = np.empty(n, np.float32)
            laux = np.empty(n, np.float32)
            scale_out[g], negmin_out[g] = _qkx_group(X[:, g], W[:, g], lg, laux, nmax, rmin, rdelta, nstep,
                                                     use_mad)
            L[:, g] = lg
        return scale_out, negmin_out, L

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

    @njit(cache=True, inline="always")
    def _first_abs_max(x):
        amax = np.float32(0.0)
        vmax = np.float32(0.0)
        for i in range(x.shape[0]):
            if abs(x[i]) > amax:
                amax = abs(x[i])
                vmax = x[i]
        return amax, vmax

    @njit(cache=True, inline="always")
    def _qx_sums(x, w, iscale, lo, hi, square_weights):
        sumlx = np.float32(0.0)
        suml2 = np.float32(0.0)
        for i in range(x.shape[0]):
            l = _clamp(np.rint(iscale * x[i]), lo, hi)
            wi = x[i] * x[i] if square_weights else w[i]
            sumlx += wi * x[i] * l
            suml2 += wi * l * l
        return sumlx, suml2

    @njit(cache=True, parallel=True)
    def signed_scale_search(X, W, nmax, square_weights):  # pragma: no cover - compiled
        """``make_qx_quants(n, nmax, x, L, 1, qw)`` on position-major [n, G] -> (scale, L = l + nmax)."""
        n, G = X.shape
        scale_out = np.zeros(G, np.float32)
        L = np.zeros((n, G), np.float32)
        fmax = np.float32(nmax)
        lo, hi = np.float32(-nmax), np.float32(nmax - 1)
        zero = np.float32(0.0)
        tenth = np.float32(0.1)
        for g in prange(G):
            x = X[:, g]
            w = W[:, g]
            amax, vmax = _first_abs_max(x)
            if amax < _EPS:
                continue
            best_iscale = -fmax / vmax
            sumlx, suml2 = _qx_sums(x, w, best_iscale, lo, hi, square_weights)
            scale = sumlx / suml2 if suml2 != zero else zero
            best = scale * sumlx
            for step in range(-9, 10):
                if step == 0:
                    continue
                iscale = -(fmax + tenth * np.float32(step)) / vmax
                sumlx, suml2 = _qx_sums(x, w, iscale, lo, hi, square_weights)
                if suml2 > zero and sumlx * sumlx > best * suml2:
                    scale = sumlx / suml2
                    best = scale * sumlx
                    best_iscale = iscale
            for i in range(n):
                L[i, g] = _clamp(np.rint(best_iscale * x[i]), lo, hi) + fmax
            scale_out[g] = scale
        return scale_out, L

    @njit(cache=True, inline="always")
    def _best_index(values, x):
        n = values.shape[0]
        if x <= values[0]:
            return 0
        if x >= values[n - 1]:
            return n - 1
        ml = 0
        mu = n - 1
        while mu - ml > 1:
            mav = (ml + mu) // 2
            if x < values[mav]:
                mu = mav
            else:
                ml = mav
        return mu - 1 if x - values[mu - 1] < values[mu] - x else mu

    @njit(cache=True, inline="always")
    def _iq4_sums(x, w, inv, values):
        sumqx = np.float32(0.0)
        sumq2 = np.float32(0.0)
        for i in range(x.shape[0]):
            q = values[_best_index(values, inv * x[i])]
            sumqx += w[i] * q * x[i]
            sumq2 += w[i] * q * q
        return sumqx, sumq2

    @njit(cache=True, parallel=True)
    def iq4_block_scales(X, W, ntry):  # pragma: no cover - compiled
        """The scale search of ``quantize_row_iq4_nl_impl`` on position-major [32, G] -> scale [G]."""
        n, G = X.shape
        out = np.zeros(G, np.float32)
        values = _KVALUES
        zero = np.float32(0.0)
        for g in prange(G):
            x = X[:, g]
            w = W[:, g]
            amax, vmax = _first_abs_max(x)
            if amax < _EPS:
                continue
            d = -vmax / values[0]
            sumqx, sumq2 = _iq4_sums(x, w, np.float32(1.0) / d, values)
            d = sumqx / sumq2 if sumq2 > zero else zero
            best = d * sumqx
            for t in range(-ntry, ntry + 1):
                sumqx, sumq2 = _iq4_sums(x, w, np.float32(t + values[0]) / vmax, values)
                if sumq2 > zero and sumqx * sumqx > best * sumq2:
                    d = sumqx / sumq2
                    best = d * sumqx
            out[g] = d
        return out

    @njit(cache=True, parallel=True)
    def weighted_descent_search(X, nmax):  # pragma: no cover - compiled
        """``make_q3_quants(n, nmax, x, L, true)`` on position-major [n, G] -> (scale, L = l + nmax)."""
        n, G = X.shape
        scale_out = np.zeros(G, np.float32)
        L = np.zeros((n, G), np.float32)
        lo, hi = np.float32(-nmax), np.float32(nmax - 1)
        zero = np.float32(0.0)
        for g in prange(G):
            x = X[:, g]
            amax, vmax = _first_abs_max(x)
            if amax < _EPS:
                continue
            iscale = np.float32(-nmax) / vmax
            li = np.empty(n, np.float32)
            sumlx = zero
            suml2 = zero
            for i in range(n):
                li[i] = _clamp(np.rint(iscale * x[i]), lo, hi)
                w = x[i] * x[i]
                sumlx += w * x[i] * li[i]
                suml2 += w * li[i] * li[i]
            for _ in range(5):
                changed = 0
                for i in range(n):
                    w = x[i] * x[i]
                    slx = sumlx - w * x[i] * li[i]
                    if slx > zero:
                        sl2 = suml2 - w * li[i] * li[i]
                        new_l = _clamp(np.rint(x[i] * sl2 / slx), lo, hi)
                        if new_l != li[i]:
                            slx += w * x[i] * new_l
                            sl2 += w * new_l * new_l
                            if sl2 > zero and slx * slx * suml2 > sumlx * sumlx * sl2:
                                li[i] = new_l
                                sumlx = slx
                                suml2 = sl2
                                changed += 1
                if changed == 0:
                    break
            for i in range(n):
                L[i, g] = li[i] + np.float32(nmax)
            scale_out[g] = sumlx / suml2 if suml2 > zero else zero
        return scale_out, L

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
