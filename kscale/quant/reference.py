"""The eager reference of the blockwise kernels: the float32 math every fast path must reproduce.

Public and below the kernels (issue 18 §5): :mod:`kscale.quant.core` builds the paper's
quantizer from these primitives, and :mod:`kscale.quant._fast` (numba / inductor) checks its
fused kernels against :func:`eager_blocks` -- on every first call per setting, at run time.

* :func:`constants` -- per-block absmax (or centered range), rounded to the stored precision;
* :func:`normalize` -- (x - offset) / scale, a zero scale normalising to 0;
* :func:`midpoints` and :func:`bucket_index` -- the nearest-code rule (count of midpoints strictly
  below the value, as ``torch.bucketize``; large code books through an exact bit-pattern table);
* :func:`eager_blocks` -- the whole round trip on [n_blocks, B] blocks.
"""
from __future__ import annotations

import functools

import torch

from kscale.quant.kernel_cache import KERNEL_CACHE

__all__ = ["bucket_index", "constants", "dequant", "eager_blocks", "midpoints", "normalize", "store"]

# ----------------------------------------------------------------------------- shared math
def constants(x: torch.Tensor, centered: bool, scale_bits: int):
    """x: [n_blocks, B] float32 -> (scale, offset|None) as [n_blocks, 1] stored-precision floats."""
    if centered:
        hi = x.amax(dim=1, keepdim=True)
        lo = x.amin(dim=1, keepdim=True)
        offset = _store((hi + lo) / 2, scale_bits)
        scale = _store((hi - lo) / 2, scale_bits)
        return scale, offset
    return _store(x.abs().amax(dim=1, keepdim=True), scale_bits), None


def _store(v: torch.Tensor, scale_bits: int) -> torch.Tensor:
    if scale_bits == 16:
        return v.clamp(-65504.0, 65504.0).to(torch.float16).float()
    return v


def normalize(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    if offset is not None:
        x = x - offset
    return x / safe


def midpoints(code: torch.Tensor) -> torch.Tensor:
    """[n] sorted codes -> [n-1] midpoints (c_j + c_{j+1}) / 2 in float32."""
    code = code.float()
    return (code[1:] + code[:-1]) / 2


# ----------------------------------------------------------------------------- large code books
_INT32_MIN = -(2**31)
_LUT_CACHE = KERNEL_CACHE.luts  # the tables live in the one kernel cache
#: codebooks with more midpoints than this use the bit-pattern table instead of bucketize
LUT_MIN_MIDPOINTS = 32


def _order_key_bucket(x: torch.Tensor) -> torch.Tensor:
    """The top 16 bits of a float32's *order-preserving* bit pattern, as int64 bucket ids.

    Positive floats: sign bit set (u ^ INT32_MIN); negative floats: all bits flipped (~u). The
    resulting unsigned integers sort exactly like the floats, so each of the 65536 buckets is
    a contiguous interval of float values (sign, 8 exponent bits, 7 mantissa bits: ~0.8 %
    relative width).
    """
    u = x.contiguous().view(torch.int32)
    key = torch.where(u >= 0, u ^ _INT32_MIN, ~u)
    return ((key >> 16) & 0xFFFF).long()


@functools.lru_cache(maxsize=1)
def _bucket_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest float32 of every bucket (NaN patterns come out as NaN). Cached: the
    same for every code book, and a data-dependent (quantile) code book builds a table per tensor."""
    b = torch.arange(65536, dtype=torch.int64)
    out = []
    for low_bits in (0, 0xFFFF):
        key = (b << 16) | low_bits  # unsigned key in [0, 2^32)
        u = torch.where(key >= 2**31, key - 2**31, (~key) & 0xFFFFFFFF)  # inverse of the key map
        u = torch.where(u >= 2**31, u - 2**32, u).to(torch.int32)  # back to signed int32 bits
        out.append(u.view(torch.float32))
    return out[0], out[1]


def _lut_for(mids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(table, padded midpoints, correction steps) for exact bucket search against ``mids``.

    table[b] = number of midpoints strictly below the smallest float of bucket b; the
    correction steps = the most midpoints any bucket holds, so ``steps`` compare-and-increment
    passes make the result exactly ``bucketize(x, mids)`` (count of midpoints < x).
    """
    key = (str(mids.device), tuple(mids.tolist()))
    hit = _LUT_CACHE.get(key)
    if hit is None:
        m = mids.detach().float().cpu()
        lo, hi = _bucket_bounds()
        # the buckets of -inf and +inf also hold NaN patterns: bound them by the infinity itself
        # (a NaN bound read as 0 would count -inf above the negative midpoints)
        lo, hi = torch.where(torch.isnan(lo), hi, lo), torch.where(torch.isnan(hi), lo, hi)
        finite = ~(torch.isnan(lo) | torch.isnan(hi))
        table = torch.bucketize(torch.nan_to_num(lo), m)
        inside = torch.bucketize(torch.nan_to_num(hi), m, right=True) - table
        steps = int(inside[finite].max().item()) if finite.any() else len(m)
        padded = torch.cat([m, torch.tensor([float("inf")])])
        hit = (table.to(mids.device), padded.to(mids.device), steps)
        if len(_LUT_CACHE) > 64:
            _LUT_CACHE.clear()
        _LUT_CACHE[key] = hit
    return hit


def bucket_index(x: torch.Tensor, mids: torch.Tensor) -> torch.Tensor:
    """``torch.bucketize(x, mids)`` (count of midpoints strictly below x), exactly, for float32 x.

    For large code books (8-bit dynamic, float, nf, quantile: 255 midpoints) a binary search per
    value costs ~30 clone-times on CPU. Instead: one table lookup on the float's bit pattern gives
    the count up to the value's bucket, then a few compare-and-increment passes (as many as the
    most crowded bucket needs) finish it. Small code books keep ``bucketize``.
    """
    x = x.float()
    if mids.numel() <= LUT_MIN_MIDPOINTS or x.device.type != "cpu":
        return torch.bucketize(x, mids)
    return _table_search(x, *_lut_for(mids))


def _table_search(x: torch.Tensor, table: torch.Tensor, padded: torch.Tensor, steps: int) -> torch.Tensor:
    """The search itself (eager, and traced into the fused ``lut`` kernel): table lookup on the
    value's bucket, then ``steps`` exact compare-and-increment passes inside the bucket."""
    idx = table[_order_key_bucket(x)]  # count of midpoints below the value's bucket
    for _ in range(steps):
        idx = idx + (padded[idx] < x).long()
    return idx


def _dequant(values, scale, offset, out_dtype):
    out = values * scale
    if offset is not None:
        out = out + offset
    return out.to(out_dtype)


def eager_blocks(xb, code, centered, scale_bits, out_dtype):
    """The reference round trip of [n_blocks, B] blocks: constants, normalise, nearest code,
    dequantize; returns a new tensor of ``out_dtype``."""
    x = xb.float()
    scale, offset = constants(x, centered, scale_bits)
    xn = normalize(x, scale, offset)
    idx = bucket_index(xn, midpoints(code))
    return _dequant(code.float()[idx], scale, offset, out_dtype)

#: public names of the private helpers the fused bodies share
store = _store
dequant = _dequant
