"""Numba versions of the expensive scale searches, for float32 CPU tensors (same bits as torch).

The torch searches in :mod:`.search` step through a group's positions and candidates with whole
tensors; each step is a handful of tiny elementwise kernels, so a 4096×4096 q4_k quantization pays
~10^4 kernel launches per chunk and ran at ~4x ggml's C. Written as plain loops over one group
(``prange`` over groups), LLVM runs the same float32 operations in the same order as ggml's C: no
fast-math, so no reassociation and no FMA contraction; every integer is turned into float32 before
it meets a float (numba would otherwise promote to float64). Results are bit-identical to the
torch searches (tested) and to ggml.

Optional: without numba the torch searches run. The fused per-type passes are in :mod:`._numba_fused`.
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
