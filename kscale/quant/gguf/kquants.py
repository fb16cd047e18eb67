"""The k-quants q4_k, q5_k, q6_k: 256-value super-blocks with quantized sub-block scales.

Layouts (ggml-common.h, QK_K = 256):

- q4_k ``d, dmin (fp16), scales[12], qs[128]``; q5_k adds ``qh[32]`` before ``qs``. Eight
  sub-blocks of 32 hold affine codes (x ≈ d·sc·l - dmin·m) with 6-bit ``sc`` and ``m`` packed in
  12 bytes (:func:`pack_scale_min_k4`); ``qs`` holds sub-blocks 2i and 2i+1 as the low and high
  nibbles of 32 bytes; q5_k's ``qh[j]`` bit k is the fifth bit of value j of sub-block k.
- q6_k ``ql[128], qh[64], scales[16] (int8), d``: sixteen sub-blocks of 16, symmetric 6-bit codes
  under an 8-bit signed scale each.

Without an importance matrix ggml runs ``quantize_row_q*_K_ref`` (sub-block scales from
``make_qkx2_quants``, then rescaled to 6 bits by their maximum); with one, ``quantize_row_q*_K_impl``
(``make_qkx3_quants`` weighted by ``imatrix · sqrt(sigma2 + x²)``, the scales themselves fitted by
``make_qp_quants``). Either way the codes are finally recomputed from the stored fp16/6-bit scales.
"""
from __future__ import annotations

import functools

import torch

from ._numerics import (GROUP_MAX_EPS, bytes_fp16, f32, first_abs_max, fp16, fp16_bytes, nearest_int, pack_bit_planes,
                        pack_nibbles, seq_sum, sqrt)
from . import _numba_fused
from .search import min_scale_search, positive_scale_search, signed_scale_search, use_numba

QK_K = 256


def position_major(x: torch.Tensor, group: int) -> torch.Tensor:
    """[super-blocks, 256] -> [group, super-blocks * (256 // group)] (see :mod:`._numerics`)."""
    return x.reshape(-1, group).T.contiguous()


def groups(t: torch.Tensor, nsb: int) -> torch.Tensor:
    """Position-major [group, nsb * k] back to [nsb, k, group]."""
    return t.T.reshape(nsb, -1, t.shape[0])


def super_blocks(w: torch.Tensor, group: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """A matrix as super-blocks [nsb, 256], their count, and its position-major groups of ``group``."""
    x = w.reshape(-1, QK_K)
    return x, x.shape[0], position_major(x, group)


def imatrix_weights(x: torch.Tensor, imatrix: torch.Tensor, group: int, sigma_factor: int) -> torch.Tensor:
    """``qw · sqrtf(sigma2 + x²)`` with ``sigma2 = factor·Σx²/256`` per super-block (factor 1 or 2,
    as each ``_impl`` writes it); position-major [group, groups]."""
    nsb = x.shape[0]
    xt = x.T.contiguous()
    total = seq_sum(xt * xt)
    sigma2 = (sigma_factor * total if sigma_factor != 1 else total) / QK_K
    qw = imatrix.view(-1, QK_K).repeat(nsb // (imatrix.numel() // QK_K), 1)
    X = position_major(x, group)
    return position_major(qw, group) * sqrt(sigma2.repeat_interleave(QK_K // group).unsqueeze(0) + X * X)


def pack_2bit(L: torch.Tensor) -> torch.Tensor:
    """2-bit values [nsb, 256] -> [nsb, 64]: value 128h + 32q + l at bits 2q of byte 32h + l."""
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)
    return ((L.to(torch.uint8) & 3).view(-1, 2, 4, 32) << shifts).sum(dim=2, dtype=torch.uint8).view(-1, 64)


def unpack_2bit(qs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_2bit` (uint8 [nsb, 256])."""
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, QK_K)


def _six_bits(v: torch.Tensor) -> torch.Tensor:
    """``uint8_t l = nearest_int(v); l = MIN(63, l)``."""
    return torch.remainder(nearest_int(v), 256).clamp_(max=63)


def pack_scale_min_k4(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and minima [nsb, 8] -> ggml's 12 bytes (inverse of ``get_scale_min_k4``)."""
    ls, lm = ls.to(torch.uint8), lm.to(torch.uint8)
    low = torch.cat([ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6)], dim=1)
    return torch.cat([low, (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)], dim=1)


def unpack_scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's 12 bytes -> (sc, m) [nsb, 8] as int64."""
    s = scales.to(torch.int64)
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def _affine_scales(x: torch.Tensor, imatrix: torch.Tensor | None, nmax: int, ref_search: tuple[float, float, int]):
    """Sub-block (scale, -min, L) and the super-block's packed (d, dmin, 12 scale bytes)."""
    x, nsb, X = super_blocks(x, 32)
    if imatrix is None:
        av_x = sqrt(seq_sum(X * X) / 32)
        W = av_x + X.abs()
        rmin, rdelta, nstep = ref_search
        scales, mins, L = min_scale_search(X, W, nmax, rmin, rdelta, nstep, False)
        scales, mins = scales.view(nsb, 8), mins.view(nsb, 8)
        max_scale = scales.max(dim=1).values
        max_scale = torch.where(max_scale > 0, max_scale, 0.0)
        max_min = mins.max(dim=1).values
        max_min = torch.where(max_min > 0, max_min, 0.0)
        inv_scale = torch.where(max_scale > 0, f32(63) / max_scale, 0.0)
        inv_min = torch.where(max_min > 0, f32(63) / max_min, 0.0)
        ls = _six_bits(inv_scale.unsqueeze(1) * scales)
        lm = _six_bits(inv_min.unsqueeze(1) * mins)
        d, dmin = max_scale / 63, max_min / 63
    else:
        W = imatrix_weights(x, imatrix, 32, 2)
        sw = seq_sum(W).view(nsb, 8)
        scales, mins, L = min_scale_search(X, W, nmax, -0.9, 0.05, 36, False)
        SW = sw.T.contiguous()
        d, ls = positive_scale_search(scales.view(nsb, 8).T.contiguous(), 63, SW)
        dmin, lm = positive_scale_search(mins.view(nsb, 8).T.contiguous(), 63, SW)
        ls, lm = ls.T.clamp(max=63), lm.T.clamp(max=63)
    return groups(L, nsb), fp16(d), fp16(dmin), ls, lm


def _requantize_affine(x: torch.Tensor, L: torch.Tensor, d: torch.Tensor, dmin: torch.Tensor, ls, lm, nmax: int):
    """Codes from the stored constants: ``clamp(nearest_int((x + dmin·m)/(d·sc)))``, kept where d·sc == 0."""
    nsb = x.shape[0]
    dj = (d.view(-1, 1) * ls).unsqueeze(2)
    dm = (dmin.view(-1, 1) * lm).unsqueeze(2)
    xs = x.view(nsb, 8, 32)
    new = nearest_int((xs + dm) / torch.where(dj != 0, dj, torch.ones_like(dj))).clamp_(0, nmax)
    return torch.where(dj != 0, new, L)


def _quantize_affine_k(w: torch.Tensor, imatrix: torch.Tensor | None, *, nmax: int) -> torch.Tensor:
    """q4_k (nmax 15) and q5_k (31)."""
    rows = w.shape[0]
    x = w.reshape(-1, QK_K)
    if imatrix is None and use_numba(x):  # the whole reference path fused (same bytes, one pass)
        out = torch.empty(x.shape[0], 144 if nmax == 15 else 176, dtype=torch.uint8)
        _numba_fused.q45k_ref(x.numpy(), nmax, out.numpy())
        return out.view(rows, -1)
    ref_search = (-1.0, 0.1, 20) if nmax == 15 else (-0.5, 0.1, 15)
    L, (d, dh), (dmin, dminh), ls, lm = _affine_scales(x, imatrix, nmax, ref_search)
    L = _requantize_affine(x, L, d, dmin, ls, lm, nmax).to(torch.uint8).contiguous()  # [nsb, 8, 32]
    scales12 = pack_scale_min_k4(ls, lm)
    pairs = L.view(-1, 4, 2, 32)
    qs = pack_nibbles(pairs[:, :, 0], pairs[:, :, 1]).reshape(-1, 128)
    parts = [fp16_bytes(dh), fp16_bytes(dminh), scales12]
    if nmax == 31:
        parts.append(pack_bit_planes(L >> 4))
    return torch.cat(parts + [qs], dim=1).view(rows, -1)


quantize_q4_k = functools.partial(_quantize_affine_k, nmax=15)
quantize_q5_k = functools.partial(_quantize_affine_k, nmax=31)


def quantize_q6_k(w: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
    rows = w.shape[0]
    x, nsb, X = super_blocks(w, 16)
    weights = None if imatrix is None else position_major(imatrix.view(1, -1).expand(rows, -1).reshape(-1, QK_K), 16)
    scales, L = signed_scale_search(X, 32, weights)
    scales, L = scales.view(nsb, 16), groups(L, nsb)
    amax, max_scale = first_abs_max(scales, dim=1)
    empty = amax < GROUP_MAX_EPS
    iscale = f32(-128) / torch.where(empty, torch.ones_like(max_scale), max_scale)
    d, dh = fp16(f32(1) / iscale)
    sc = nearest_int(iscale.unsqueeze(1) * scales).clamp_(max=127)
    dj = (d.unsqueeze(1) * sc).unsqueeze(2)
    new = nearest_int(x.view(nsb, 16, 16) / torch.where(dj != 0, dj, torch.ones_like(dj))).clamp_(-32, 31) + 32
    L = torch.where(dj != 0, new, L).to(torch.uint8).view(nsb, 2, 4, 32)  # [half, quarter, l]
    ql = torch.cat([pack_nibbles(L[:, :, 0], L[:, :, 2]), pack_nibbles(L[:, :, 1], L[:, :, 3])], dim=2)
    qh = pack_2bit((L >> 4).reshape(nsb, QK_K))
    block = torch.cat([ql.reshape(nsb, 128), qh, sc.to(torch.int8).view(torch.uint8), fp16_bytes(dh)], dim=1)
    return torch.where(empty.unsqueeze(1), torch.zeros_like(block), block).view(rows, -1)


# --- dequantization: the float32 operations of gguf.quants, in its order --------------------------

def _dequantize_affine_k(data: torch.Tensor, *, nmax: int) -> torch.Tensor:
    block_bytes = 144 if nmax == 15 else 176
    b = data.reshape(-1, block_bytes)
    if use_numba(b):
        out = torch.empty(b.shape[0], QK_K)
        _numba_fused.dequantize_q45k(b.numpy(), nmax, out.numpy())
        return out
    d, dmin = bytes_fp16(b[:, 0:2]), bytes_fp16(b[:, 2:4])
    sc, m = unpack_scale_min_k4(b[:, 4:16])
    qs = b[:, -128:].reshape(-1, 4, 1, 32)
    q = torch.cat([qs & 0xF, qs >> 4], dim=2).reshape(-1, 8, 32).to(torch.int64)
    if nmax == 31:
        q = q | (((b[:, 16:48].view(-1, 1, 32).to(torch.int64) >> torch.arange(8).view(1, 8, 1)) & 1) << 4)
    dl = (d * sc.to(torch.float32)).unsqueeze(2)
    ml = (dmin * m.to(torch.float32)).unsqueeze(2)
    return (dl * q.to(torch.float32) - ml).reshape(-1, QK_K)


dequantize_q4_k = functools.partial(_dequantize_affine_k, nmax=15)
dequantize_q5_k = functools.partial(_dequantize_affine_k, nmax=31)


def dequantize_q6_k(data: torch.Tensor) -> torch.Tensor:
    b = data.reshape(-1, 210)
    ql = b[:, :128].reshape(-1, 2, 1, 64)
    sc = b[:, 192:208].contiguous().view(torch.int8).to(torch.float32)
    d = bytes_fp16(b[:, 208:210])
    low = torch.cat([ql & 0xF, ql >> 4], dim=2).reshape(-1, 8, 32).to(torch.int64)
    high = unpack_2bit(b[:, 128:192]).to(torch.int64).view(-1, 8, 32)
    q = ((low | (high << 4)) - 32).reshape(-1, 16, 16).to(torch.float32)
    return ((d * sc).unsqueeze(2) * q).reshape(-1, QK_K)
