"""ggml's scale searches (``make_qx_quants``, ``make_qkx2/3_quants``), vectorised over blocks.

Each search tries a handful of candidate scales for a small group (16 or 32 values) and keeps the
one with the best weighted error. In ggml every candidate is a loop over the group with float32
accumulators and a comparison against the best so far; here every step of those loops runs on all
groups at once (position-major tensors ``[n, groups]``, see :mod:`._numerics`), candidates in
ggml's order, so ties and roundings fall exactly as in C. A candidate's codes are recomputed from
its (deterministic) scale instead of being stored.
"""
from __future__ import annotations

import torch

from ._numerics import GROUP_MAX_EPS, f32, first_abs_max, first_max, first_min, nearest_int, seq_sum


def signed_scale_search(x: torch.Tensor, nmax: int, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
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
