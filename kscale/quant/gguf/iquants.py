"""The non-linear 4-bit types iq4_nl and iq4_xs (llama.cpp's ``quantize_row_iq4_nl_impl``).

Both map each value to the nearest of 16 fixed non-uniform levels ``KVALUES`` (int8, denser near
zero) times a block scale. Layouts (ggml-common.h): iq4_nl ``d (fp16), qs[16]`` per 32 values;
iq4_xs ``d (fp16), scales_h (uint16), scales_l[4], qs[128]`` per 256 values, whose eight 32-value
sub-blocks carry 6-bit signed scales (low nibbles in ``scales_l``, two high bits each in
``scales_h``). ``qs`` packs value j of a 32-value group in the low nibble of byte j and value
16 + j in the high one.

``ggml_quantize_chunk`` always runs the search with ``ntry = 7`` (with or without an importance
matrix; weights are ``x²`` without one, ``imatrix · sqrt(sigma2 + x²)`` with one): the least-squares
scale of the initial ``max/-127`` assignment, then 15 candidate inverse scales ``(t - 127)/max``,
each refit, kept when ``sumqx²/sumq2`` grows.
"""
from __future__ import annotations

import torch

from . import _numba_search
from ._numerics import (GROUP_MAX_EPS, best_index_int8, bytes_fp16, f32, first_abs_max, fp16, fp16_bytes,
                        nearest_int, pack_nibbles, seq_sum, sqrt, u32_bytes)
from .search import use_numba

KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
NTRY = 7


def _levels() -> torch.Tensor:
    return torch.tensor(KVALUES, dtype=torch.float32)


def _weights(x: torch.Tensor, imatrix: torch.Tensor | None, rows: int, super_size: int) -> torch.Tensor:
    """Per-value weights, [groups of super_size, super_size]."""
    if imatrix is None:
        return x * x
    xt = x.T.contiguous()
    sigma2 = seq_sum(xt * xt) * f32(2.0 / super_size)
    qw = imatrix.view(1, -1).expand(rows, -1).reshape(-1, super_size)
    return qw * sqrt(sigma2.unsqueeze(1) + x * x)


def block_scales(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The search of ``quantize_row_iq4_nl_impl`` on position-major 32-value groups [32, groups]:
    the best scale of each group (0 for an all-zero group)."""
    if use_numba(x):
        return torch.from_numpy(_numba_search.iq4_block_scales(x.contiguous().numpy(),
                                                               weights.contiguous().numpy(), NTRY))
    values = _levels()
    amax, vmax = first_abs_max(x, dim=0)
    zero = amax < GROUP_MAX_EPS
    vmax = torch.where(zero, torch.ones_like(vmax), vmax)
    def sums(inverse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = values[best_index_int8(values, inverse * x)]
        wq = weights * q
        return seq_sum(wq * x), seq_sum(wq * q)

    d = -vmax / f32(KVALUES[0])
    sumqx, sumq2 = sums(f32(1) / d)
    d = torch.where(sumq2 > 0, sumqx / torch.where(sumq2 > 0, sumq2, torch.ones_like(sumq2)), 0.0)
    best = d * sumqx
    for t in range(-NTRY, NTRY + 1):
        sumqx, sumq2 = sums(f32(t + KVALUES[0]) / vmax)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        new_d = sumqx / sumq2
        d = torch.where(better, new_d, d)
        best = torch.where(better, new_d * sumqx, best)
    return torch.where(zero, 0.0, d)


def _codes(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Level indices of ``inverse · x`` ([groups, 32] times [groups, 1])."""
    return best_index_int8(_levels(), inverse * x)


def _safe_inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d != 0, f32(1) / torch.where(d != 0, d, torch.ones_like(d)), 0.0)


def _pack_codes(L: torch.Tensor) -> torch.Tensor:
    """[groups, 32] level indices -> [groups, 16] bytes."""
    return pack_nibbles(L[:, :16], L[:, 16:])


def quantize_iq4_nl(w: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
    rows = w.shape[0]
    x = w.reshape(-1, 32)
    weights = _weights(x, imatrix, rows, 32)
    d = block_scales(x.T.contiguous(), weights.T.contiguous())
    L = _codes(x, _safe_inverse(d).unsqueeze(1))
    return torch.cat([fp16_bytes(fp16(d)[1]), _pack_codes(L)], dim=1).view(rows, -1)


def quantize_iq4_xs(w: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
    rows = w.shape[0]
    x = w.reshape(-1, 256)
    nsb = x.shape[0]
    weights = _weights(x, imatrix, rows, 256)
    sub = x.reshape(-1, 32)
    scales = block_scales(sub.T.contiguous(), weights.reshape(-1, 32).T.contiguous()).view(nsb, 8)
    _, max_scale = first_abs_max(scales, dim=1)
    d = -max_scale / 32
    l = nearest_int(_safe_inverse(d).unsqueeze(1) * scales).clamp_(-32, 31)
    dl = d.unsqueeze(1) * l
    L = _codes(sub, _safe_inverse(dl).reshape(-1, 1))
    l = (l + 32).to(torch.int64)
    scales_l = ((l[:, 0::2] & 0xF) | ((l[:, 1::2] & 0xF) << 4)).to(torch.uint8)
    scales_h = ((l >> 4) << (2 * torch.arange(8))).sum(dim=1)
    parts = [fp16_bytes(fp16(d)[1]), u32_bytes(scales_h)[:, :2], scales_l, _pack_codes(L).view(nsb, 128)]
    return torch.cat(parts, dim=1).view(rows, -1)


# --- dequantization: the float32 operations of gguf.quants, in its order --------------------------

def _level_values(qs: torch.Tensor) -> torch.Tensor:
    """[groups, 16] bytes -> [groups, 32] level values (float32)."""
    return _levels()[torch.cat([qs & 0xF, qs >> 4], dim=1).to(torch.int64)]


def dequantize_iq4_nl(data: torch.Tensor) -> torch.Tensor:
    b = data.reshape(-1, 18)
    return bytes_fp16(b[:, :2]) * _level_values(b[:, 2:])


def dequantize_iq4_xs(data: torch.Tensor) -> torch.Tensor:
    b = data.reshape(-1, 136)
    d = bytes_fp16(b[:, :2])
    scales_h = b[:, 2].to(torch.int64) | (b[:, 3].to(torch.int64) << 8)
    low = b[:, 4:8].to(torch.int64)
    scales_l = torch.stack([low & 0xF, low >> 4], dim=2).reshape(-1, 8)
    high = (scales_h.unsqueeze(1) >> (2 * torch.arange(8))) & 3
    dl = (d * ((scales_l | (high << 4)) - 32).to(torch.float32)).unsqueeze(2)
    q = _level_values(b[:, 8:].reshape(-1, 16)).view(-1, 8, 32)
    return (dl * q).reshape(-1, 256)
