"""ggml's scale searches (``make_qx_quants``, ``make_qkx2/3_quants``), vectorised over blocks.

Each search tries a handful of candidate scales for a small group (16 or 32 values) and keeps the
one with the best weighted error. In ggml every candidate is a loop over the group with float32
accumulators and a comparison against the best so far; here every step of those loops runs on all
groups at once (position-major tensors ``[n, groups]``, see :mod:`._numerics`), candidates in
ggml's order, so ties and roundings fall exactly as in C. A candidate's codes are recomputed from
its (deterministic) scale instead of being stored.
"""
from __future__ import annotations

import numpy as np
import torch

from . import _numba_search
from ._numerics import GROUP_MAX_EPS, f32, first_abs_max, first_max, first_min, nearest_int, seq_sum

#: "auto": the numba searches for float32 CPU tensors when numba is there, else torch; "torch": always torch
ENGINE = "auto"


def use_numba(x: torch.Tensor) -> bool:
    """Whether the numba version of a kernel runs for ``x`` (float32 values or uint8 blocks on the CPU;
    bit-identical either way)."""
    return (ENGINE == "auto" and _numba_search.AVAILABLE and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.uint8))


def signed_scale_search(x: torch.Tensor, nmax: int, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_qx_quants`` (see :func:`_signed_scale_search_torch`), numba or torch."""
    if use_numba(x):
        xs = x.contiguous().numpy()
        ws = xs if weights is None else weights.contiguous().numpy()
        scale, L = _numba_search.signed_scale_search(xs, ws, nmax, weights is None)
        return torch.from_numpy(scale), torch.from_numpy(L)
    return _signed_scale_search_torch(x, nmax, weights)


def _signed_scale_search_torch(x: torch.Tensor, nmax: int, weights: torch.Tensor | None):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)`` on position-major ``x`` [n, groups].

    Symmetric codes ``l`` in [-nmax, nmax-1]; weights ``qw`` or, without them, ``x²``. Tries
    ``-(nmax + 0.1·is)/max`` for is = -9..9 after the plain ``-nmax/max`` and its least-squares
    scale. Returns (scale [groups], codes L = l + nmax [n, groups]; all 0 for an all-zero group).
    """
    amax, vmax = first_abs_max(x, dim=0)
    zero = amax < GROUP_MAX_EPS
    safe_max = torch.where(zero, torch.ones_like(vmax), vmax)
    w = x * x if weights is None else weights
    wx = w * x

    def codes(iscale: torch.Tensor) -> torch.Tensor:
        return nearest_int(iscale * x).clamp_(-nmax, nmax - 1)

    def sums(l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return seq_sum(wx * l), seq_sum(w * l * l)

    best_iscale = f32(-nmax) / safe_max
    sumlx, suml2 = sums(codes(best_iscale))
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(sumlx))
    best = scale * sumlx
    tenth = f32(0.1)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(nmax + tenth * step) / safe_max
        slx, sl2 = sums(codes(iscale))
        better = (sl2 > 0) & (slx * slx > best * sl2)
        new_scale = slx / sl2
        scale = torch.where(better, new_scale, scale)
        best = torch.where(better, new_scale * slx, best)
        best_iscale = torch.where(better, iscale, best_iscale)
    L = codes(best_iscale) + nmax
    return torch.where(zero, 0.0, scale), torch.where(zero, 0.0, L)


def min_scale_search(x: torch.Tensor, weights: torch.Tensor, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``make_qkx2/3_quants`` (see :func:`_min_scale_search_torch`), numba or torch."""
    if use_numba(x):
        scale, neg_min, L = _numba_search.min_scale_search(
            x.contiguous().numpy(), weights.contiguous().numpy(), nmax, np.float32(rmin), np.float32(rdelta),
            nstep, use_mad)
        return torch.from_numpy(scale), torch.from_numpy(neg_min), torch.from_numpy(L)
    return _min_scale_search_torch(x, weights, nmax, rmin, rdelta, nstep, use_mad)


def _min_scale_search_torch(x: torch.Tensor, weights: torch.Tensor, nmax: int, rmin: float, rdelta: float,
                            nstep: int, use_mad: bool):
    """``make_qkx2_quants`` / ``make_qkx3_quants`` (identical when weights are given) on [n, groups].

    Affine codes ``l`` in [0, nmax] with ``x ≈ scale·l + min`` (min <= 0). Starts from the
    range ``(max-min)/nmax``, then tries ``iscale = (rmin + rdelta·is + nmax)/(max - min)`` for
    is = 0..nstep, each refit by weighted least squares; a candidate replaces the best when its
    weighted error (squared, or absolute with ``use_mad``) is strictly smaller. As in ggml, a
    winning candidate's ``min`` is used by the candidates after it. Returns (scale, -min, L).
    """
    n = x.shape[0]
    vmin = first_min(x, dim=0)
    vmax = first_max(x, dim=0)
    vmin = torch.where(vmin > 0, torch.zeros_like(vmin), vmin)
    flat = vmax == vmin
    sum_w = seq_sum(weights, from_zero=False)
    sum_x = seq_sum(weights * x, from_zero=False)
    span = torch.where(flat, torch.ones_like(vmax), vmax - vmin)

    def codes(iscale: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
        return nearest_int(iscale * (x - mn)).clamp_(0, nmax)

    def error(scale: torch.Tensor, mn: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(scale)
        for i in range(n):
            diff = scale * L[i] + mn - x[i]
            diff = diff.abs() if use_mad else diff * diff
            total += weights[i] * diff
        return total

    iscale = f32(nmax) / span
    scale = f32(1) / iscale
    mn = vmin
    L = codes(iscale, mn)
    best = error(scale, mn, L)
    rmin_f, rdelta_f = f32(rmin), f32(rdelta)
    for step in range(nstep + 1):
        iscale = (rmin_f + rdelta_f * step + nmax) / (vmax - mn)
        laux = codes(iscale, mn)
        wl = weights * laux
        sum_l = seq_sum(wl)
        sum_l2 = seq_sum(wl * laux)
        sum_xl = seq_sum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        positive = this_min > 0
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(positive, sum_xl / sum_l2, this_scale)
        cur = error(this_scale, this_min, laux)
        better = (D > 0) & (cur < best) & ~flat
        best = torch.where(better, cur, best)
        scale = torch.where(better, this_scale, scale)
        mn = torch.where(better, this_min, mn)
        L = torch.where(better, laux, L)
    zero = torch.zeros_like(scale)
    return torch.where(flat, zero, scale), -torch.where(flat, vmin, mn), torch.where(flat, 0.0, L)


def _as_u8(l: torch.Tensor) -> torch.Tensor:
    """A C store of an int into ``uint8_t`` (wraps modulo 256)."""
    return torch.remainder(l, 256)


def positive_scale_search(x: torch.Tensor, nmax: int, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_qp_quants(n, nmax, x, L, quant_weights)``: codes of non-negative values ``x`` [n, groups].

    Quantizes a super-block's sub-block scales (or minima) to ``l`` in [0, nmax] under one scale:
    tries ``(nmax + 0.1·is)/max`` for is = -4..4 by weighted squared error, then up to five
    passes of coordinate descent that move one code at a time when the least-squares fit improves.
    Returns (scale, L).
    """
    n = x.shape[0]
    vmax = x.max(dim=0).values
    zero = ~(vmax >= GROUP_MAX_EPS)
    vmax = torch.where(zero, torch.ones_like(vmax), vmax)
    wx = weights * x

    def mse(scale: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        diff = x - scale * L
        return seq_sum(weights * diff * diff)

    iscale = f32(nmax) / vmax
    best = mse(f32(1) / iscale, _as_u8(nearest_int(iscale * x)))
    tenth = f32(0.1)
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (tenth * step + nmax) / vmax
        cur = mse(f32(1) / iscale_is, nearest_int(iscale_is * x).clamp_(max=nmax))
        better = cur < best
        best = torch.where(better, cur, best)
        iscale = torch.where(better, iscale_is, iscale)
    L = nearest_int(iscale * x).clamp_(max=nmax)
    sumlx = seq_sum(wx * L)
    suml2 = seq_sum(weights * L * L)
    for _ in range(5):  # a pass that changes nothing leaves the state as it is, so no early exit is needed
        for i in range(n):
            w, xi, li = weights[i], x[i], L[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w * li * li
            active = (slx > 0) & (sl2 > 0)
            new_l = nearest_int(xi * sl2 / torch.where(active, slx, torch.ones_like(slx))).clamp_(max=nmax)
            slx = slx + wx[i] * new_l
            sl2 = sl2 + w * new_l * new_l
            take = active & (new_l != li) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = torch.where(take, new_l, li)
            sumlx = torch.where(take, slx, sumlx)
            suml2 = torch.where(take, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, torch.ones_like(suml2)), 0.0)
    return torch.where(zero, 0.0, scale), torch.where(zero, 0.0, _as_u8(L))


def weighted_descent_search(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_q3_quants`` (see :func:`_weighted_descent_search_torch`), numba or torch."""
    if use_numba(x):
        scale, L = _numba_search.weighted_descent_search(x.contiguous().numpy(), nmax)
        return torch.from_numpy(scale), torch.from_numpy(L)
    return _weighted_descent_search_torch(x, nmax)


def _weighted_descent_search_torch(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)`` on position-major ``x`` [n, groups].

    Symmetric codes ``l`` in [-nmax, nmax-1] from ``-nmax/max``, then up to five passes of
    coordinate descent weighted by x²: each code moves to the value the least-squares scale of the
    others suggests when that improves the fit. Returns (scale, L = l + nmax; 0 for an all-zero group).
    """
    n = x.shape[0]
    amax, vmax = first_abs_max(x, dim=0)
    zero = amax < GROUP_MAX_EPS
    iscale = f32(-nmax) / torch.where(zero, torch.ones_like(vmax), vmax)
    L = nearest_int(iscale * x).clamp_(-nmax, nmax - 1)
    w = x * x
    wx = w * x
    sumlx = seq_sum(wx * L)
    suml2 = seq_sum(w * L * L)
    for _ in range(5):  # a pass that changes nothing leaves the state as it is: no early exit needed
        for i in range(n):
            li = L[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            active = slx > 0
            new_l = nearest_int(x[i] * sl2 / torch.where(active, slx, torch.ones_like(slx))).clamp_(-nmax, nmax - 1)
            slx = slx + wx[i] * new_l
            sl2 = sl2 + w[i] * new_l * new_l
            take = active & (new_l != li) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = torch.where(take, new_l, li)
            sumlx = torch.where(take, slx, sumlx)
            suml2 = torch.where(take, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, torch.ones_like(suml2)), 0.0)
    return torch.where(zero, 0.0, scale), torch.where(zero, 0.0, L + nmax)
