"""GGUF's first block types: q4_0, q4_1, q5_0, q5_1, q8_0 (32 values a block, one fp16 scale).

Layouts (ggml-common.h): q4_0 ``d, qs[16]``; q4_1 ``d, m, qs[16]``; q5_0 ``d, qh[4], qs[16]``;
q5_1 ``d, m, qh[4], qs[16]``; q8_0 ``d, qs[32]``. Nibble ``j`` of ``qs`` holds value ``j`` (low)
and ``j + 16`` (high); ``qh`` is a little-endian uint32 whose bit ``k`` is the fifth bit of value k.

Without an importance matrix ggml uses its ``quantize_row_*_ref`` rules (scale from the block's
max or range, truncating casts); with one, the ``_impl`` searches (:mod:`.search`), weighting each
value by ``imatrix[col] · sqrt(sigma2 + x²)`` with ``sigma2`` the row's mean square.
q8_0 ignores an imatrix, as ggml does.
"""
from __future__ import annotations

import functools

import torch

from ._numerics import (bytes_fp16, bytes_u32, f32, first_abs_max, first_max, first_min, fp16, fp16_bytes,
                        pack_nibbles, round_away, seq_sum, sqrt, u32_bytes)
from . import _numba_fused
from .search import min_scale_search, signed_scale_search, use_numba

QK = 32


def _blocks(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(-1, QK)


def _safe_inverse(d: torch.Tensor) -> torch.Tensor:
    """``d ? 1.0f/d : 0.0f``"""
    return torch.where(d != 0, f32(1) / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def _imatrix_weights(w: torch.Tensor, imatrix: torch.Tensor) -> torch.Tensor:
    """``qw[j] · sqrtf(sigma2 + x²)`` with ``sigma2 = sum_x2 / n_per_row`` (row-wide sequential sum);
    position-major [32, blocks]."""
    rows, n_per_row = w.shape
    sigma2 = seq_sum((w * w).T.contiguous()) / n_per_row  # [rows]
    weight = imatrix.view(1, -1) * sqrt(sigma2.view(-1, 1) + w * w)
    return _blocks(weight).T.contiguous()


def _nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Block codes [blocks, 32] -> qs [blocks, 16]."""
    return pack_nibbles(codes[:, :16], codes[:, 16:])


def _high_bits(codes: torch.Tensor) -> torch.Tensor:
    """qh: bit k = fifth bit of code k, as 4 little-endian bytes."""
    bits = (codes.to(torch.int64) >> 4) & 1
    return u32_bytes((bits << torch.arange(QK, dtype=torch.int64)).sum(dim=-1))


def _symmetric_ref(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q4_0/q5_0 reference: ``d = max / -levels``, code ``(int8)(x·id + levels + 0.5)``."""
    _, vmax = first_abs_max(x, dim=1)
    d = vmax / -levels
    _, h = fp16(d)
    codes = torch.trunc(x * _safe_inverse(d).unsqueeze(1) + f32(levels + 0.5)).clamp_(max=2 * levels - 1)
    return h, codes


def _affine_ref(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q4_1/q5_1 reference: ``d = (max - min)/nmax``, code ``(x - min)·id + 0.5`` truncated."""
    vmin, vmax = first_min(x, dim=1), first_max(x, dim=1)
    d = (vmax - vmin) / nmax
    codes = torch.trunc((x - vmin.unsqueeze(1)) * _safe_inverse(d).unsqueeze(1) + f32(0.5))
    if nmax == 15:  # q4_1 clamps (MIN(15, ..)); q5_1 stores the bits as they come
        codes = codes.clamp_(max=nmax)
    return fp16(d)[1], fp16(vmin)[1], codes


def _symmetric_imatrix(w: torch.Tensor, imatrix: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = _blocks(w).T.contiguous()
    d, L = signed_scale_search(x, nmax, _imatrix_weights(w, imatrix))
    return fp16(d)[1], L.T


def _affine_imatrix(w: torch.Tensor, imatrix: torch.Tensor, nmax: int):
    x = _blocks(w).T.contiguous()
    d, neg_min, L = min_scale_search(x, _imatrix_weights(w, imatrix), nmax, -0.9, 0.05, 36, False)
    return fp16(d)[1], fp16(-neg_min)[1], L.T


def _fused_ref(w: torch.Tensor, bits: int, affine: bool) -> torch.Tensor | None:
    """The reference path in one numba pass writing ggml's bytes (None where numba does not run)."""
    x = _blocks(w)
    if not use_numba(x):
        return None
    out = torch.empty(x.shape[0], 2 + 2 * affine + 4 * (bits == 5) + 16, dtype=torch.uint8)
    _numba_fused.legacy_ref(x.numpy(), bits, affine, out.numpy())
    return out.view(w.shape[0], -1)


def _quantize_symmetric(w: torch.Tensor, imatrix: torch.Tensor | None, *, levels: int) -> torch.Tensor:
    """q4_0 (levels 8) / q5_0 (16): ``d`` then, for 5 bits, ``qh``, then the nibbles."""
    if imatrix is None and (fused := _fused_ref(w, 4 if levels == 8 else 5, False)) is not None:
        return fused
    h, codes = _symmetric_ref(_blocks(w), levels) if imatrix is None else _symmetric_imatrix(w, imatrix, levels)
    parts = [fp16_bytes(h)] + ([_high_bits(codes)] if levels == 16 else []) + [_nibbles(codes)]
    return torch.cat(parts, dim=1).view(w.shape[0], -1)


def _quantize_affine(w: torch.Tensor, imatrix: torch.Tensor | None, *, nmax: int) -> torch.Tensor:
    """q4_1 (nmax 15) / q5_1 (31): ``d, m`` then, for 5 bits, ``qh``, then the nibbles."""
    if imatrix is None and (fused := _fused_ref(w, 4 if nmax == 15 else 5, True)) is not None:
        return fused
    d, m, codes = _affine_ref(_blocks(w), nmax) if imatrix is None else _affine_imatrix(w, imatrix, nmax)
    parts = [fp16_bytes(d), fp16_bytes(m)] + ([_high_bits(codes)] if nmax == 31 else []) + [_nibbles(codes)]
    return torch.cat(parts, dim=1).view(w.shape[0], -1)


quantize_q4_0 = functools.partial(_quantize_symmetric, levels=8)
quantize_q5_0 = functools.partial(_quantize_symmetric, levels=16)
quantize_q4_1 = functools.partial(_quantize_affine, nmax=15)
quantize_q5_1 = functools.partial(_quantize_affine, nmax=31)


def quantize_q8_0(w: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
    x = _blocks(w)
    if use_numba(x):  # one fused pass, same bytes
        out = torch.empty(x.shape[0], 34, dtype=torch.uint8)
        _numba_fused.q8_0_ref(x.numpy(), out.numpy())
        return out.view(w.shape[0], -1)
    d = x.abs().amax(dim=1) / 127
    codes = round_away(x * _safe_inverse(d).unsqueeze(1)).to(torch.int8)
    return torch.cat([fp16_bytes(fp16(d)[1]), codes.view(torch.uint8)], dim=1).view(w.shape[0], -1)


# --- dequantization: the float32 operations of gguf.quants, in its order --------------------------

def _fused_dequantize(data: torch.Tensor, bits: int, affine: bool) -> torch.Tensor | None:
    """gguf's values in one numba pass (None where numba does not run)."""
    if not use_numba(data):
        return None
    blocks = data.reshape(-1, 2 + 2 * affine + 4 * (bits == 5) + 16)
    out = torch.empty(blocks.shape[0], QK)
    _numba_fused.dequantize_legacy(blocks.numpy(), bits, affine, out.numpy())
    return out


def _split(data: torch.Tensor, block_bytes: int, *sizes: int) -> list[torch.Tensor]:
    return list(torch.split(data.reshape(-1, block_bytes), list(sizes), dim=1))


def _unnibble(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs & 0xF, qs >> 4], dim=1)


def _with_high(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    bits = (bytes_u32(qh).unsqueeze(1) >> torch.arange(QK, dtype=torch.int64)) & 1
    return _unnibble(qs).to(torch.int64) | (bits << 4)


def dequantize_q4_0(data: torch.Tensor) -> torch.Tensor:
    if (fused := _fused_dequantize(data, 4, False)) is not None:
        return fused
    d, qs = _split(data, 18, 2, 16)
    return bytes_fp16(d) * (_unnibble(qs).to(torch.float32) - 8)


def dequantize_q4_1(data: torch.Tensor) -> torch.Tensor:
    if (fused := _fused_dequantize(data, 4, True)) is not None:
        return fused
    d, m, qs = _split(data, 20, 2, 2, 16)
    return bytes_fp16(d) * _unnibble(qs).to(torch.float32) + bytes_fp16(m)


def dequantize_q5_0(data: torch.Tensor) -> torch.Tensor:
    if (fused := _fused_dequantize(data, 5, False)) is not None:
        return fused
    d, qh, qs = _split(data, 22, 2, 4, 16)
    return bytes_fp16(d) * (_with_high(qh, qs) - 16).to(torch.float32)


def dequantize_q5_1(data: torch.Tensor) -> torch.Tensor:
    if (fused := _fused_dequantize(data, 5, True)) is not None:
        return fused
    d, m, qh, qs = _split(data, 24, 2, 2, 4, 16)
    return bytes_fp16(d) * _with_high(qh, qs).to(torch.float32) + bytes_fp16(m)


def dequantize_q8_0(data: torch.Tensor) -> torch.Tensor:
    if use_numba(data):
        blocks = data.reshape(-1, 34)
        out = torch.empty(blocks.shape[0], 32)
        _numba_fused.dequantize_q8_0(blocks.numpy(), out.numpy())
        return out
    d, qs = _split(data, 34, 2, 32)
    return qs.contiguous().view(torch.int8).to(torch.float32) * bytes_fp16(d)
