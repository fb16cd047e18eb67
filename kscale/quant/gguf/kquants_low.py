"""The low-bit k-quants q2_k and q3_k: sixteen 16-value sub-blocks per 256-value super-block.

Layouts (ggml-common.h): q2_k ``scales[16], qs[64], d, dmin`` (each scale byte holds a 4-bit
scale, low, and a 4-bit minimum, high; affine 2-bit codes); q3_k ``hmask[32], qs[64], scales[12],
d`` (symmetric 3-bit codes: two low bits in ``qs``, the third in ``hmask``, bit k of byte j for value
32k + j; 6-bit signed sub-block scales packed in 12 bytes). ``qs`` packs values 32q + l of each
128-value half into bits 2q of byte l.

Without an importance matrix ggml runs ``quantize_row_q2_K_ref`` (``make_qkx2_quants`` by mean
absolute error) / ``quantize_row_q3_K_ref`` (``make_q3_quants``: coordinate descent weighted by x²);
with one, the ``_impl`` versions (``make_qkx3_quants`` + ``make_qp_quants``; ``make_qx_quants``
twice).
"""
from __future__ import annotations

import torch

from ._numerics import bytes_fp16, f32, first_abs_max, fp16, fp16_bytes, nearest_int, pack_bit_planes, seq_sum
from .kquants import QK_K, groups, imatrix_weights, pack_2bit, super_blocks, unpack_2bit
from .search import min_scale_search, positive_scale_search, signed_scale_search, weighted_descent_search


def quantize_q2_k(w: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
    rows = w.shape[0]
    x, nsb, X = super_blocks(w, 16)
    if imatrix is None:
        scales, mins, L = min_scale_search(X, X.abs(), 3, -0.5, 0.1, 15, True)
        scales, mins = scales.view(nsb, 16), mins.view(nsb, 16)
        max_scale = scales.max(dim=1).values
        max_min = mins.max(dim=1).values
        has_scale, has_min = max_scale > 0, max_min > 0
        ls = torch.where(has_scale.unsqueeze(1), nearest_int((f32(15) / max_scale).unsqueeze(1) * scales), 0.0)
        lm = torch.where(has_min.unsqueeze(1), nearest_int((f32(15) / max_min).unsqueeze(1) * mins), 0.0)
        d = torch.where(has_scale, max_scale / 15, 0.0)
        dmin = torch.where(has_min, max_min / 15, 0.0)
    else:
        W = imatrix_weights(x, imatrix, 16, 1)
        sw = seq_sum(W).view(nsb, 16).T.contiguous()
        scales, mins, L = min_scale_search(X, W, 3, -0.9, 0.05, 36, False)
        d, ls = positive_scale_search(scales.view(nsb, 16).T.contiguous(), 15, sw)
        dmin, lm = positive_scale_search(mins.view(nsb, 16).T.contiguous(), 15, sw)
        ls, lm = ls.T, lm.T
    packed = (torch.remainder(ls, 256).to(torch.int64) | (lm.to(torch.int64) << 4)) & 0xFF
    (d, dh), (dmin, dminh) = fp16(d), fp16(dmin)
    dj = (d.unsqueeze(1) * (packed & 0xF).to(torch.float32)).unsqueeze(2)
    mj = (dmin.unsqueeze(1) * (packed >> 4).to(torch.float32)).unsqueeze(2)
    new = nearest_int((x.view(nsb, 16, 16) + mj) / torch.where(dj != 0, dj, torch.ones_like(dj))).clamp_(0, 3)
    L = torch.where(dj != 0, new, groups(L, nsb)).to(torch.uint8).reshape(nsb, QK_K)
    parts = [packed.to(torch.uint8), pack_2bit(L), fp16_bytes(dh), fp16_bytes(dminh)]
    return torch.cat(parts, dim=1).view(rows, -1)


def _pack_q3_scales(l: torch.Tensor) -> torch.Tensor:
    """Sixteen 6-bit values [nsb, 16] -> ggml's 12 bytes: low nibbles of j and j+8 in byte j < 8,
    the two high bits of value 4g + k at bits 2g of byte 8 + k."""
    l = l.to(torch.uint8)
    low = (l[:, :8] & 0xF) | ((l[:, 8:] & 0xF) << 4)
    high = ((l >> 4).view(-1, 4, 4) << torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 4, 1)).sum(
        dim=1, dtype=torch.uint8)
    return torch.cat([low, high], dim=1)


def _unpack_q3_scales(b: torch.Tensor) -> torch.Tensor:
    """ggml's 12 bytes -> sixteen signed scales (value - 32) as int64 [nsb, 16]."""
    s = b.to(torch.int64)
    low = torch.cat([s[:, :8] & 0xF, s[:, :8] >> 4], dim=1)
    high = ((s[:, 8:12].view(-1, 1, 4) >> torch.tensor([0, 2, 4, 6]).view(1, 4, 1)) & 3).reshape(-1, 16)
    return (low | (high << 4)) - 32


def quantize_q3_k(w: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
    rows = w.shape[0]
    x, nsb, X = super_blocks(w, 16)
    if imatrix is None:
        scales, L = weighted_descent_search(X, 4)
        scales = scales.view(nsb, 16)
        _, max_scale = first_abs_max(scales, dim=1)
        has_scale = max_scale != 0
        iscale = f32(-32) / torch.where(has_scale, max_scale, torch.ones_like(max_scale))
        l = nearest_int(iscale.unsqueeze(1) * scales).clamp_(-32, 31) + 32
        l = torch.where(has_scale.unsqueeze(1), l, 0.0)
        d = torch.where(has_scale, f32(1) / iscale, 0.0)
    else:
        W = imatrix_weights(x, imatrix, 16, 2)
        sw = seq_sum(W).view(nsb, 16).T.contiguous()
        scales, L = signed_scale_search(X, 4, W)
        d, l = signed_scale_search(scales.view(nsb, 16).T.contiguous(), 32, sw)
        l = l.T
    packed = _pack_q3_scales(l)
    d, dh = fp16(d)
    dj = (d.unsqueeze(1) * _unpack_q3_scales(packed).to(torch.float32)).unsqueeze(2)
    new = nearest_int(x.view(nsb, 16, 16) / torch.where(dj != 0, dj, torch.ones_like(dj))).clamp_(-4, 3) + 4
    L = torch.where(dj != 0, new, groups(L, nsb)).to(torch.uint8).reshape(nsb, QK_K)
    hmask = pack_bit_planes((L > 3).view(nsb, 8, 32))
    L = torch.where(L > 3, L - 4, L)
    return torch.cat([hmask, pack_2bit(L), packed, fp16_bytes(dh)], dim=1).view(rows, -1)


# --- dequantization: the float32 operations of gguf.quants, in its order --------------------------

def dequantize_q2_k(data: torch.Tensor) -> torch.Tensor:
    b = data.reshape(-1, 84)
    scales = b[:, :16].to(torch.int64)
    d, dmin = bytes_fp16(b[:, 80:82]), bytes_fp16(b[:, 82:84])
    dl = (d * (scales & 0xF).to(torch.float32)).unsqueeze(2)
    ml = (dmin * (scales >> 4).to(torch.float32)).unsqueeze(2)
    q = unpack_2bit(b[:, 16:80]).view(-1, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(-1, QK_K)


def dequantize_q3_k(data: torch.Tensor) -> torch.Tensor:
    b = data.reshape(-1, 110)
    hmask, qs, scales, d = b[:, :32], b[:, 32:96], b[:, 96:108], bytes_fp16(b[:, 108:110])
    dl = (d * _unpack_q3_scales(scales).to(torch.float32)).unsqueeze(2)
    high = (hmask.view(-1, 1, 32).to(torch.int64) >> torch.arange(8).view(1, 8, 1)) & 1
    q = unpack_2bit(qs).to(torch.int64) - ((high.reshape(-1, QK_K) ^ 1) << 2)
    return (dl * q.view(-1, 16, 16).to(torch.float32)).reshape(-1, QK_K)
