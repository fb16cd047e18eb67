"""Kernels behind :func:`kscale.quant.fake_quantize`: an eager reference and fused fast paths.

Why a fast path: a sweep fake-quantizes every weight matrix of a model dozens of times, and
plain torch ops (absmax, divide, ``bucketize``, gather, multiply) make 6+ passes over memory;
``bucketize`` alone is ~65x a ``clone`` on CPU. ``torch.compile`` (inductor emits one fused,
vectorised C++ loop on CPU) does it in about two passes. Both paths compute *bit-identical*
results (tested), because the fused ones evaluate the same float32 expressions:

- ``select`` (codebooks of at most ``_SELECT_MAX_CODES`` entries): a chain of
  ``where(x > mid_j, code_{j+1}, ...)`` over the sorted midpoints -- the same "count of midpoints
  strictly below x" rule as ``bucketize``, without a gather.
- ``int`` (larger k): the index is estimated arithmetically as round(x * L), then corrected by
  comparing x with the two neighbouring midpoints, computed exactly as the reference computes
  them, so no value can land on a different code than the reference's.

Other codebooks (8-bit float/nf/dynamic/quantile) use the eager path. The fused paths run on
CPU only (CUDA eager is already fast); if compilation fails (no C++ compiler, unsupported
platform) kscale logs one warning and stays on the eager path for the rest of the process.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger(__name__)

KERNELS = ("auto", "eager", "compiled")
_SELECT_MAX_CODES = 32
#: below this many values, compiling is not worth it (and tests stay compile-free)
MIN_COMPILED_NUMEL = 1 << 20
_state: dict[str, object] = {"mode": os.environ.get("KSCALE_QUANT_KERNEL", "auto"), "broken": None}
_compiled: dict[str, object] = {}


def set_kernel(mode: str) -> None:
    """Choose the fake-quantization kernel process-wide: ``auto`` (default; compiled for CPU
    tensors of at least ``MIN_COMPILED_NUMEL`` values when compilation works), ``eager`` or
    ``compiled``. Also settable with ``$KSCALE_QUANT_KERNEL``."""
    if mode not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {mode!r}")
    _state["mode"] = mode


def get_kernel() -> str:
    return str(_state["mode"])


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
_LUT_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = {}
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


def _bucket_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest float32 of every bucket (NaN patterns come out as NaN)."""
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


# ----------------------------------------------------------------------------- kernels
def _eager(xb, code, centered, scale_bits, out_dtype):
    x = xb.float()
    scale, offset = constants(x, centered, scale_bits)
    xn = normalize(x, scale, offset)
    idx = bucket_index(xn, midpoints(code))
    return _dequant(code.float()[idx], scale, offset, out_dtype)


def _select_body(xb, mids, code, centered: bool, scale_bits: int, out_dtype, n_mids: int):
    x = xb.float()
    scale, offset = constants(x, centered, scale_bits)
    xn = normalize(x, scale, offset)
    val = torch.where(xn > mids[0], code[1], code[0])
    for j in range(1, n_mids):
        val = torch.where(xn > mids[j], code[j + 1], val)
    return _dequant(val, scale, offset, out_dtype)


def _int_value(q: torch.Tensor, top: int) -> torch.Tensor:
    # exactly how dtypes.int_codebook builds code q + top: float64 division, cast to float32
    return (q.double() / top).float()


def _int_body(xb, centered: bool, scale_bits: int, out_dtype, top: int):
    x = xb.float()
    scale, offset = constants(x, centered, scale_bits)
    xn = normalize(x, scale, offset)
    q = torch.round(xn * top).clamp(-top, top)  # estimate, off by at most one level
    c = _int_value(q, top)
    upper = (c + _int_value(q + 1, top)) / 2  # the reference's midpoints, bit for bit
    lower = (_int_value(q - 1, top) + c) / 2
    q = torch.where((q < top) & (xn > upper), q + 1, q)
    q = torch.where((q > -top) & (xn <= lower), q - 1, q)
    return _dequant(_int_value(q, top), scale, offset, out_dtype)


def _lut_body(xb, table, padded, code, centered: bool, scale_bits: int, out_dtype, steps: int):
    x = xb.float()
    scale, offset = constants(x, centered, scale_bits)
    xn = normalize(x, scale, offset)
    idx = _table_search(xn, table, padded, steps)
    return _dequant(code[idx], scale, offset, out_dtype)


def _strategy(code: torch.Tensor, dtype_name: str) -> str | None:
    if code.numel() <= _SELECT_MAX_CODES:  # fastest: no gather, no float64
        return "select"
    if dtype_name == "int":
        return "int"
    return "lut"  # any other large code book: bit-pattern table + a few exact corrections


@contextlib.contextmanager
def _compile_config():
    """Keep fp16 rounding of the constants inside the fused kernel (inductor would otherwise
    elide the float32 -> fp16 -> float32 round trip) and allow one graph per setting."""
    import torch._dynamo.config as dcfg
    import torch._inductor.config as icfg

    patches = [icfg.patch(emulate_precision_casts=True)]
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dcfg, name):
            patches.append(dcfg.patch(**{name: 64}))
            break
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def _get_compiled(name: str):
    if name not in _compiled:
        body = {"select": _select_body, "int": _int_body, "lut": _lut_body}[name]
        _compiled[name] = torch.compile(body, dynamic=True, fullgraph=True)
    return _compiled[name]


def _run_compiled(strategy, xb, code, spec, out_dtype):
    fn = _get_compiled(strategy)
    with _compile_config(), torch.no_grad():
        if strategy == "int":
            top = 2 ** (spec.bits - 1) - 1
            return fn(xb, spec.centered, spec.scale_bits, out_dtype, top)
        code32 = code.float().contiguous()
        mids = midpoints(code32).contiguous()
        if strategy == "lut":
            table, padded, steps = _lut_for(mids)
            return fn(xb, table, padded, code32, spec.centered, spec.scale_bits, out_dtype, steps)
        return fn(xb, mids, code32, spec.centered, spec.scale_bits, out_dtype, mids.numel())


def fake_quantize_blocks(xb, code, spec, out_dtype, *, kernel: str | None = None) -> torch.Tensor:
    """[n_blocks, B] blocks -> dequantized blocks in ``out_dtype``, by the chosen kernel."""
    mode = kernel or get_kernel()
    if mode not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {mode!r}")
    strategy = _strategy(code, spec.dtype)
    want = strategy is not None and xb.device.type == "cpu" and (
        mode == "compiled"
        or (mode == "auto" and xb.numel() >= MIN_COMPILED_NUMEL and _state["broken"] is None)
    )
    if want:
        try:
            return _run_compiled(strategy, xb, code, spec, out_dtype)
        except Exception as err:  # compiler missing / backend failure: fall back, once
            if mode == "compiled":
                raise
            _state["broken"] = repr(err)
            log.warning("fused quantization kernel unavailable (%s); using eager kernels", err)
    return _eager(xb, code, spec.centered, spec.scale_bits, out_dtype)


def compiled_kernel_available() -> bool:
    """True when the fused kernels compile and run here (tries once on a tiny tensor)."""
    if _state["broken"] is not None:
        return False
    try:
        from kscale.quant.spec import QuantSpec

        from kscale.quant.dtypes import nf_codebook

        # the nf4 / fp32 / absmax / fp16-constant graph: the one most sweeps use anyway
        x = torch.linspace(-1, 1, 128).view(2, 64)
        _run_compiled("select", x, nf_codebook(4), QuantSpec(4, "nf"), torch.float32)
        return True
    except Exception as err:
        _state["broken"] = repr(err)
        log.warning("fused quantization kernel unavailable (%s)", err)
        return False
