"""Numba kernels for :func:`kscale.quant.fake_quantize_` on float32 CPU weights.

Why not only ``torch.compile``: inductor's CPU code for a 15-step ``where`` chain converts every
comparison mask between vector and mask registers (``VecMask`` -> ``blendv``), ~4 instructions a
step, and stores each result twice; nf4 and float4 came out at 4-5x the memory floor (an
``out.copy_``). The same math written as plain loops over one block, compiled by LLVM through
numba, becomes one compare and one masked blend a step and lands at ~2-3x. Nothing here is
hand-vectorised: the loops are written so that LLVM can vectorise them without fast-math
(integer reductions for the block constants, every code and midpoint held in a local), so
every result stays *bit-identical* to the eager reference (tested), the same float32
operations in the same order:

- block constants: absmax as the integer max of the values' bit patterns with the sign
  cleared, max/min (``centered``) as integer max/min of their order-preserving keys, both
  exactly the float max/min; fp16 storage rounding done on the bits (round to nearest even,
  subnormals included) because numba has no float16 on CPU;
- ``select`` (code books of at most 16 codes, padded with +inf midpoints that never fire):
  ``v = code[j+1] if x > mid[j] else v`` over the sorted midpoints, the rule of the inductor
  chain and of ``bucketize``;
- ``int``: round, then the exact neighbouring-midpoint correction of ``_fast._int_body``;
- ``lut1``: the single-correction bit-pattern table of ``_fast._lut1_body`` (8-bit code books).

Optional: without numba (or if it fails to compile here), :mod:`kscale.quant._fast` uses its
inductor kernels, then eager.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

try:  # pragma: no cover - exercised by whichever of the two the environment has
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic
except Exception:  # ImportError, or a numba/numpy version mismatch
    numba = None

#: midpoints of the ``select`` kernel: 4-bit code books have 15; smaller ones are padded
SELECT_MIDS = 15
_F16_MAX = np.float32(65504.0)

if numba is not None:

    @intrinsic
    def _bits(typingctx, v):
        """float32 -> its uint32 bit pattern (an LLVM bitcast: free)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))
        return types.uint32(types.float32), codegen

    @intrinsic
    def _float(typingctx, u):
        """uint32 bit pattern -> float32."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())
        return types.float32(types.uint32), codegen

    @njit(inline="always")
    def _order_key(u):
        """Order-preserving key of a float32's bits: keys sort like the floats (-0 < +0)."""
        if u & np.uint32(0x80000000):
            return ~u
        return u ^ np.uint32(0x80000000)

    @njit(inline="always")
    def _from_key(k):
        if k & np.uint32(0x80000000):
            return _float(k ^ np.uint32(0x80000000))
        return _float(~k)

    @njit(inline="always")
    def _store(v, scale16):
        """``_fast._store``: clamp to the fp16 range, round to fp16 (nearest even), back to
        float32; NaN stays NaN. fp32 constants (``scale16`` false) are stored as they are."""
        if not scale16 or v != v:
            return v
        v = min(max(v, -_F16_MAX), _F16_MAX)
        if abs(v) < np.float32(6.103515625e-05):  # fp16 subnormal range: a fixed step of 2^-24
            return np.float32(np.rint(v * np.float32(16777216.0)) * np.float32(5.9604644775390625e-08))
        u = _bits(v)  # normal: round the 23-bit mantissa to 10 bits, ties to even
        u = (u + np.uint32(0x0FFF) + ((u >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
        return _float(u)

    @njit(inline="always")
    def _constants(rowu, centered, scale16):
        """(scale, offset, safe divisor) of one block, as ``_fast.constants`` + ``normalize``."""
        n = rowu.shape[0]
        if centered:
            hi = np.uint32(0)
            lo = np.uint32(0xFFFFFFFF)
            for i in range(n):
                k = _order_key(rowu[i])
                hi = max(hi, k)
                lo = min(lo, k)
            h, l = _from_key(hi), _from_key(lo)
            offset = _store((h + l) / np.float32(2.0), scale16)
            scale = _store((h - l) / np.float32(2.0), scale16)
        else:
            m = np.uint32(0)
            for i in range(n):
                m = max(m, rowu[i] & np.uint32(0x7FFFFFFF))
            offset = np.float32(0.0)
            scale = _store(_float(m), scale16)
        safe = np.float32(1.0) if scale == 0 else scale
        return scale, offset, safe

    @njit(parallel=True, cache=True, boundscheck=False)
    def select_blocks_(x, xu, mids, code, centered, scale16):
        """Nearest of <= 16 sorted codes (``mids``: 15 midpoints, +inf padded), in place."""
        m0, m1, m2, m3, m4, m5, m6, m7 = mids[0], mids[1], mids[2], mids[3], mids[4], mids[5], mids[6], mids[7]
        m8, m9, m10, m11, m12, m13, m14 = mids[8], mids[9], mids[10], mids[11], mids[12], mids[13], mids[14]
        c0, c1, c2, c3, c4, c5, c6, c7 = code[0], code[1], code[2], code[3], code[4], code[5], code[6], code[7]
        c8, c9, c10, c11, c12, c13, c14, c15 = (code[8], code[9], code[10], code[11], code[12], code[13],
                                                code[14], code[15])
        for b in prange(x.shape[0]):
            row = x[b]
            scale, offset, safe = _constants(xu[b], centered, scale16)
            for i in range(row.shape[0]):
                xn = (row[i] - offset) / safe if centered else row[i] / safe
                v = c1 if xn > m0 else c0
                v = c2 if xn > m1 else v
                v = c3 if xn > m2 else v
                v = c4 if xn > m3 else v
                v = c5 if xn > m4 else v
                v = c6 if xn > m5 else v
                v = c7 if xn > m6 else v
                v = c8 if xn > m7 else v
                v = c9 if xn > m8 else v
                v = c10 if xn > m9 else v
                v = c11 if xn > m10 else v
                v = c12 if xn > m11 else v
                v = c13 if xn > m12 else v
                v = c14 if xn > m13 else v
                v = c15 if xn > m14 else v
                row[i] = v * scale + offset if centered else v * scale

    @njit(inline="always")
    def _level(q, top, single):
        """Code value of level q: ``_fast._int_value`` (float32 division where it is exact)."""
        if single:
            return q / top
        return np.float32(np.float64(q) / np.float64(top))

    @njit(parallel=True, cache=True, boundscheck=False)
    def int_blocks_(x, xu, top, single, centered, scale16):
        """Symmetric integer levels q / top, q in -top..top, in place (``_fast._int_body``)."""
        ftop = np.float32(top)
        for b in prange(x.shape[0]):
            row = x[b]
            scale, offset, safe = _constants(xu[b], centered, scale16)
            for i in range(row.shape[0]):
                xn = (row[i] - offset) / safe if centered else row[i] / safe
                q = np.float32(np.rint(xn * ftop))
                q = ftop if q > ftop else q
                q = -ftop if q < -ftop else q
                c = _level(q, ftop, single)
                upper = (c + _level(q + np.float32(1.0), ftop, single)) / np.float32(2.0)
                lower = (_level(q - np.float32(1.0), ftop, single) + c) / np.float32(2.0)
                q = q + np.float32(1.0) if (q < ftop and xn > upper) else q
                q = q - np.float32(1.0) if (q > -ftop and xn <= lower) else q
                v = _level(q, ftop, single)
                row[i] = v * scale + offset if centered else v * scale

    @njit(parallel=True, cache=True, boundscheck=False)
    def lut1_blocks_(x, xu, table, centered, scale16):
        """Large code books, at most one midpoint per bit-pattern bucket (``_fast._lut1_body``):
        ``table[bucket]`` = (midpoint, code below, code above, pad), one 16-byte row a lookup
        (three separate tables cost ~1.5x: three cache lines per value)."""
        for b in prange(x.shape[0]):
            row = x[b]
            scale, offset, safe = _constants(xu[b], centered, scale16)
            for i in range(row.shape[0]):
                xn = (row[i] - offset) / safe if centered else row[i] / safe
                k = _order_key(_bits(xn)) >> np.uint32(16)
                v = table[k, 2] if table[k, 0] < xn else table[k, 1]
                row[i] = v * scale + offset if centered else v * scale


def available() -> bool:
    return numba is not None


def set_threads(n: int) -> None:
    """Use ``n`` threads (torch's setting), at most numba's own maximum."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def pack_lut1(thr: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The three per-bucket tables of ``_fast._lut1_for`` as rows of ``lut1_blocks_``'s table."""
    return np.ascontiguousarray(np.stack([thr, lo, hi, hi], axis=1), dtype=np.float32)


def pad_select(mids: np.ndarray, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pad a code book of <= 16 codes to the kernel's 15 midpoints / 16 codes: +inf midpoints
    never fire (``x > inf`` is false, NaN included), so the extra codes are never chosen."""
    m = np.full(SELECT_MIDS, np.inf, dtype=np.float32)
    c = np.zeros(SELECT_MIDS + 1, dtype=np.float32)
    m[: len(mids)] = mids
    c[: len(code)] = code
    return m, c
