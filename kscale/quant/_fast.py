"""Kernels behind :func:`kscale.quant.fake_quantize_`: fused fast paths over the eager reference
(:mod:`kscale.quant.reference`, public, below this module), each checking itself against it.

Why a fast path: a sweep fake-quantizes every weight matrix of a model dozens of times, and
plain torch ops (absmax, divide, ``bucketize``, gather, multiply) make 6+ passes over memory;
``bucketize`` alone is ~65x a ``clone`` on CPU. ``torch.compile`` (inductor emits one fused,
vectorised C++ loop on CPU) reads each block once and writes the result back into the same
storage (no full-size output: fresh memory costs page faults, ~5x an ``out.copy_``). Both paths
compute *bit-identical* results (tested), because the fused ones evaluate the same float32
expressions:

- ``int``: the index is estimated arithmetically as round(x * L), then corrected by comparing x
  with the two neighbouring midpoints, computed exactly as the reference computes them, so no
  value can land on a different code than the reference's.
- ``select`` (other codebooks of at most ``_SELECT_MAX_CODES`` entries): a chain of
  ``where(x > mid_j, code_{j+1}, ...)`` over the sorted midpoints -- the same "count of midpoints
  strictly below x" rule as ``bucketize``, without a gather.
- ``lut`` / ``lut1`` (larger code books: 8-bit float/nf/dynamic/quantile): a table on the top 16
  bits of the float's order-preserving bit pattern, plus exact corrections.

The fused paths run on CPU only (CUDA eager is already fast). Contiguous float32 blocks (CPU
sweeps load fp32) go to the numba versions of the same three kernels (:mod:`kscale.quant._numba`,
~2x faster than inductor's code for the select chain); fp16/bf16 and the rare cases numba has no
kernel for go to ``torch.compile``. If compilation fails (no C++ compiler, unsupported platform)
kscale logs one warning and falls back (numba -> inductor -> eager) for the rest of the process.
The time spent compiling is recorded (:func:`compile_stats`).
"""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch

from kscale.quant import _numba
from kscale.quant.dtypes import nf_codebook
from kscale.quant.kernel_cache import EAGER, KERNEL_CACHE
from kscale.quant.reference import (  # noqa: F401  (the eager reference; names kept for the fused bodies)
    LUT_MIN_MIDPOINTS,
    _dequant,
    _lut_for,
    _order_key_bucket,
    _store,
    _table_search,
    bucket_index,
    constants,
    midpoints,
    normalize,
)
from kscale.quant.reference import eager_blocks as _eager
from kscale.quant.spec import QuantSpec

log = logging.getLogger(__name__)

KERNELS = ("auto", "eager", "compiled")
_SELECT_MAX_CODES = 32
#: below this many values, compiling is not worth it (and tests stay compile-free)
MIN_COMPILED_NUMEL = 1 << 20
# every mutable cache lives in KERNEL_CACHE (kscale.quant.kernel_cache); these names alias its parts
_state = KERNEL_CACHE.state
_compiled = KERNEL_CACHE.compiled


def set_kernel(mode: str) -> None:
    """Choose the fake-quantization kernel process-wide: ``auto`` (default; compiled for CPU
    tensors of at least ``MIN_COMPILED_NUMEL`` values when compilation works), ``eager`` or
    ``compiled``. Also settable with ``$KSCALE_QUANT_KERNEL``."""
    if mode not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {mode!r}")
    _state["mode"] = mode


def get_kernel() -> str:
    return str(_state["mode"])


# ----------------------------------------------------------------------------- kernels

def _select_body(xb, mids, code, centered: bool, scale_bits: int, n_mids: int):
    x = xb.float()
    scale, offset = constants(x, centered, scale_bits)
    xn = normalize(x, scale, offset)
    val = torch.where(xn > mids[0], code[1], code[0])
    for j in range(1, n_mids):
        val = torch.where(xn > mids[j], code[j + 1], val)
    return _dequant(val, scale, offset, xb.dtype)


def _int_value(q: torch.Tensor, top: int, single: bool) -> torch.Tensor:
    # dtypes.int_codebook builds code q + top by a float64 division cast to float32; where the
    # float32 division gives the same value for every level (checked: _single_division_exact),
    # the fused kernel divides in float32, ~2x faster than converting to float64 and back
    if single:
        return q / top
    return (q.double() / top).float()


_SINGLE_EXACT: dict[int, bool] = {}


def _single_division_exact(top: int) -> bool:
    """Whether q / top in float32 equals float32(q / top in float64) for every level q the
    int kernel evaluates (-top-1 .. top+1): no double-rounding difference for this ``top``."""
    if top not in _SINGLE_EXACT:
        q = torch.arange(-top - 1, top + 2, dtype=torch.float32)
        _SINGLE_EXACT[top] = bool(torch.equal(q / top, (q.double() / top).float()))
    return _SINGLE_EXACT[top]


def _int_body(xb, centered: bool, scale_bits: int, top: int, single: bool):
    x = xb.float()
    scale, offset = constants(x, centered, scale_bits)
    xn = normalize(x, scale, offset)
    q = torch.round(xn * top).clamp(-top, top)  # estimate, off by at most one level
    c = _int_value(q, top, single)
    upper = (c + _int_value(q + 1, top, single)) / 2  # the reference's midpoints, bit for bit
    lower = (_int_value(q - 1, top, single) + c) / 2
    q = torch.where((q < top) & (xn > upper), q + 1, q)
    q = torch.where((q > -top) & (xn <= lower), q - 1, q)
    return _dequant(_int_value(q, top, single), scale, offset, xb.dtype)


def _lut_body(xb, table, padded, code, centered: bool, scale_bits: int, steps: int):
    x = xb.float()
    scale, offset = constants(x, centered, scale_bits)
    xn = normalize(x, scale, offset)
    idx = _table_search(xn, table, padded, steps)
    return _dequant(code[idx], scale, offset, xb.dtype)


def _lut1_body(xb, thr, lo, hi, centered: bool, scale_bits: int):
    """The table search when no bucket holds more than one midpoint (every 8-bit code book
    here): per bucket, its one midpoint ``thr`` (or +inf) and the codes below and above it, so
    three lookups with one index replace lookup, correction and a dependent code lookup."""
    x = xb.float()
    scale, offset = constants(x, centered, scale_bits)
    xn = normalize(x, scale, offset)
    b = _order_key_bucket(xn)
    return _dequant(torch.where(thr[b] < xn, hi[b], lo[b]), scale, offset, xb.dtype)


_LUT1_CACHE = KERNEL_CACHE.lut1s


def _lut1_for(code: torch.Tensor, mids: torch.Tensor):
    """(thr, lo, hi) per bucket, from the ``steps == 1`` table: idx = table[b] + (thr < x),
    value = code[idx], i.e. where(thr < x, code[table[b] + 1], code[table[b]])."""
    key = (str(code.device), tuple(code.tolist()))
    hit = _LUT1_CACHE.get(key)
    if hit is None:
        table, padded, _ = _lut_for(mids)
        top = code.numel() - 1
        hit = (padded[table].contiguous(), code[table].contiguous(),
               code[(table + 1).clamp(max=top)].contiguous())
        if len(_LUT1_CACHE) > 64:
            _LUT1_CACHE.clear()
        _LUT1_CACHE[key] = hit
    return hit


def _strategy(code: torch.Tensor, dtype_name: str) -> str | None:
    if dtype_name == "int":  # arithmetic: no comparison chain, no lookup
        return "int"
    if code.numel() <= _SELECT_MAX_CODES:  # no gather
        return "select"
    return "lut"  # any other large code book: bit-pattern table + exact corrections


_BODIES = {"select": _select_body, "int": _int_body, "lut": _lut_body, "lut1": _lut1_body}


def _in_place(body):
    """``body`` writing its result back into its first argument: one fused loop that reads each
    block and overwrites it, so no full-size output is allocated (fresh memory pays page faults:
    a ``clone`` costs ~5x an ``out.copy_`` into warm memory)."""

    def run(xb, *args):
        xb.copy_(body(xb, *args))

    run.__name__ = f"{body.__name__}_in_place"
    return run


@contextlib.contextmanager
def _compile_config():
    """Keep fp16 rounding of the constants inside the fused kernel (inductor would otherwise
    elide the float32 -> fp16 -> float32 round trip), allow one graph per setting, one graph
    for every shape (no duck sizing), and keep the whole per-value expression in one loop: left
    at its defaults, inductor cuts long ``where`` chains into intermediate buffers, which its
    CPU outer-loop fusion cannot handle when the result is written back into the input
    (``KeyError: 'buf1'`` in torch 2.13)."""
    # here, not at the top: torch._dynamo/_inductor add ~1.4 s to import, and only compiling needs them
    import torch._dynamo.config as dcfg
    import torch._inductor.config as icfg

    patches = [icfg.patch(emulate_precision_casts=True, realize_opcount_threshold=100_000,
                          realize_acc_reads_threshold=100_000, realize_reads_threshold=100_000)]
    try:  # no "duck sizing": a [64, 64] first call must not tie n_blocks to the block size
        # here: a private module that older torch lacks (the ImportError below)
        import torch.fx.experimental._config as fxcfg

        if hasattr(fxcfg, "use_duck_shape"):
            patches.append(fxcfg.patch(use_duck_shape=False))
    except ImportError:  # pragma: no cover - older torch
        pass
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
        _compiled[name] = torch.compile(_in_place(_BODIES[name]), dynamic=True, fullgraph=True)
    return _compiled[name]


# ----------------------------------------------------------------------------- compile time
_COMPILE = KERNEL_CACHE.compile_time


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters  # here: torch._dynamo adds ~1.4 s to import (see above)

    return int(counters["stats"]["unique_graphs"])


def compile_stats() -> dict[str, float]:
    """Process-wide time spent in calls of the fused kernels that compiled a graph.

    A sweep's first cell of each kind pays seconds of ``torch.compile`` (tracing, C++ codegen,
    the compiler; a one-time import of inductor on the very first), every later cell of the same
    kind none: rows record it separately so a study's time plan can be calibrated from them.

    Returns:
        ``{"compile_s": seconds in compiling calls (the whole call, including its own run,
        which is negligible next to the compilation), "compiles": number of such calls}``.
    """
    return {"compile_s": float(_COMPILE["seconds"]), "compiles": int(_COMPILE["compiles"])}


def take_compile_seconds() -> float:
    """Seconds spent compiling fused kernels since the previous call (the first call: since the
    process started). Call it after each cell's quantization to attribute the cost to that cell."""
    total = float(_COMPILE["seconds"])
    since = total - float(_COMPILE["taken"])
    _COMPILE["taken"] = total
    return since


def _compiled_call(strategy: str, code: torch.Tensor, spec) -> tuple[str, tuple]:
    """Which fused graph runs, and its arguments after the blocks."""
    if strategy == "int":
        top = 2 ** (spec.bits - 1) - 1
        return "int", (spec.centered, spec.scale_bits, top, _single_division_exact(top))
    code32 = code.float().contiguous()
    mids = midpoints(code32).contiguous()
    if strategy == "lut":
        table, padded, steps = _lut_for(mids)
        if steps == 1:
            return "lut1", (*_lut1_for(code32, mids), spec.centered, spec.scale_bits)
        return "lut", (table, padded, code32, spec.centered, spec.scale_bits, steps)
    return "select", (mids, code32, spec.centered, spec.scale_bits, mids.numel())


def _run_compiled_(strategy: str, xb: torch.Tensor, code: torch.Tensor, spec) -> None:
    name, args = _compiled_call(strategy, code, spec)
    start = time.perf_counter()
    fresh = name not in _compiled  # the very first one also imports dynamo/inductor: seconds
    fn = _get_compiled(name)
    before = _graphs_compiled()
    with _compile_config(), torch.no_grad():
        fn(xb, *args)
    if fresh or _graphs_compiled() != before:  # this call traced and compiled (or loaded) a graph
        _COMPILE["seconds"] = float(_COMPILE["seconds"]) + time.perf_counter() - start
        _COMPILE["compiles"] = int(_COMPILE["compiles"]) + 1


def _numba_call(strategy: str, code: torch.Tensor, spec):
    """The numba kernel and its arguments after the blocks, or ``None`` where it has none (a
    select code book of more than 16 codes, a table with crowded buckets). Derived from
    :func:`_compiled_call`'s choice, so both engines always run the same kernel on the same
    constants."""
    name, args = _compiled_call(strategy, code, spec)
    if name == "int":
        centered, scale_bits, top, single = args
        return _numba.int_blocks_, (top, single, centered, scale_bits == 16)
    if name == "select":
        mids, code32, centered, scale_bits, _ = args
        if code32.numel() > _numba.SELECT_MIDS + 1:
            return None
        return _numba.select_blocks_, (*_numba.pad_select(mids.numpy(), code32.numpy()), centered,
                                       scale_bits == 16)
    if name == "lut1":
        thr, lo, hi, centered, scale_bits = args
        return _numba.lut1_blocks_, (_numba.pack_lut1(thr.numpy(), lo.numpy(), hi.numpy()), centered,
                                     scale_bits == 16)
    return None  # "lut": a bucket holds several midpoints


def _run_numba_(strategy: str, xb: torch.Tensor, code: torch.Tensor, spec) -> bool:
    """Run the numba kernel in place when there is one for this case (contiguous float32 CPU
    blocks, numba installed and working); False means: use the inductor kernel instead."""
    if (_state["numba"] is not None or not _numba.available() or xb.dtype != torch.float32
            or not xb.is_contiguous() or xb.device.type != "cpu"):
        return False
    call = _numba_call(strategy, code.cpu(), spec)
    if call is None:
        return False
    fn, args = call
    x = xb.detach().numpy()
    start = time.perf_counter()
    compiled_before = len(fn.signatures)
    try:
        _numba.set_threads(torch.get_num_threads())
        fn(x, x.view(np.uint32), *args)
    except Exception as err:  # numba/LLVM failure here: inductor from now on
        _state["numba"] = repr(err)
        log.warning("numba quantization kernel unavailable (%s); using torch.compile kernels", err)
        return False
    if len(fn.signatures) != compiled_before:  # compiled (or loaded from numba's cache)
        _COMPILE["seconds"] = float(_COMPILE["seconds"]) + time.perf_counter() - start
        _COMPILE["compiles"] = int(_COMPILE["compiles"]) + 1
    return True


#: rows of blocks the eager kernel processes at a time: its float32 temporaries stay a few MB
#: (reused by the allocator) instead of several full-size tensors per call
EAGER_CHUNK_NUMEL = 1 << 18


def _eager_(xb: torch.Tensor, code: torch.Tensor, spec) -> None:
    rows = max(1, EAGER_CHUNK_NUMEL // xb.shape[1])
    for start in range(0, xb.shape[0], rows):
        part = xb[start:start + rows]
        part.copy_(_eager(part, code, spec.centered, spec.scale_bits, xb.dtype))


def resolve_kernel(kernel: str | None, numel: int, device: torch.device) -> str:
    """``"compiled"`` or ``"eager"``: what ``kernel`` (``None`` = the process setting) means for a
    tensor of ``numel`` values on ``device``. ``auto`` compiles for large CPU tensors only."""
    mode = kernel or get_kernel()
    if mode not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {mode!r}")
    if mode == "auto":
        ok = device.type == "cpu" and numel >= MIN_COMPILED_NUMEL and _state["broken"] is None
        return "compiled" if ok else "eager"
    return mode


def fake_quantize_blocks_(xb: torch.Tensor, code: torch.Tensor, spec, *, kernel: str | None = None,
                          strict: bool | None = None, record: bool = True) -> None:
    """Fake-quantize contiguous [n_blocks, B] blocks in place (any float dtype, kept).

    The first fast-path call per (config, block size, device, dtype) checks itself against the
    eager reference on this very tensor (:mod:`kscale.quant.kernel_cache`); a mismatch or an
    exception sends that key to eager for the rest of the process, with one warning.

    Args:
        kernel: ``auto``/``eager``/``compiled`` or ``None`` (the process setting); ``auto``
            decides on ``xb``'s own size.
        strict: raise if the compiled kernel fails (or fails its self-check) instead of falling
            back to eager; default: only when ``kernel="compiled"`` was asked for explicitly.
        record: note the kernel in :data:`KERNEL_CACHE` ``.used`` (not for a ragged block's tail).
    """
    mode = kernel or get_kernel()
    strict = mode == "compiled" if strict is None else strict
    resolved = resolve_kernel(mode, xb.numel(), xb.device)
    strategy = _strategy(code, spec.dtype)
    usable = strict or _state["broken"] is None
    key = (strategy, spec.dtype, spec.bits, spec.exponent_bits, spec.centered, spec.scale_bits,
           xb.shape[1], str(xb.device), xb.dtype)
    verdict = KERNEL_CACHE.checked.get(key)
    if (resolved == "compiled" and usable and xb.device.type == "cpu" and strategy is not None
            and (verdict != EAGER or strict)):
        first = verdict is None
        before = xb.clone() if first else None
        try:
            engine = "numba" if _run_numba_(strategy, xb, code, spec) else None
            if engine is None:
                _run_compiled_(strategy, xb, code, spec)
                engine = "inductor"
            if first and not _self_check(key, engine, xb, before, code, spec, strict):
                return  # xb holds the eager result
            KERNEL_CACHE.used.add(engine)
            return
        except Exception as err:  # compiler missing / backend failure: fall back, once
            if strict:
                raise
            if first:
                xb.copy_(before)
                KERNEL_CACHE.checked[key] = EAGER
            _state["broken"] = repr(err)
            log.warning("fused quantization kernel unavailable (%s); using eager kernels", err)
    _eager_(xb, code, spec)
    if record:
        KERNEL_CACHE.used.add("eager")


def _differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Where two results differ in value (NaN equals NaN; +0 equals -0, as in the kernels'
    bit-identity contract: the fused int kernel may write -0.0 where eager writes +0.0)."""
    return (a != b) & ~(torch.isnan(a) & torch.isnan(b))


def _self_check(key: tuple, engine: str, xb: torch.Tensor, before: torch.Tensor, code: torch.Tensor,
                spec, strict: bool) -> bool:
    """Compare the fast path's result in ``xb`` with the eager reference on ``before``; on a
    mismatch put the reference into ``xb``, mark ``key`` eager, warn once (raise if strict)."""
    ref = before
    _eager_(ref, code, spec)
    n_bad = int(_differ(xb, ref).sum())
    if n_bad == 0:
        KERNEL_CACHE.checked[key] = engine
        return True
    message = (f"{engine} quantization kernel differs from the eager reference on {n_bad} of "
               f"{xb.numel()} values ({spec.dtype}{spec.bits} B={xb.shape[1]} {xb.dtype} on {xb.device})")
    if strict:
        raise RuntimeError(message)
    xb.copy_(ref)
    KERNEL_CACHE.checked[key] = EAGER
    KERNEL_CACHE.used.add("eager")
    log.warning("%s; using eager for this setting from now on", message)
    return False


def take_kernels() -> str | None:
    """Which kernels quantized since the previous call (``numba``, ``inductor``, ``eager``,
    ``+``-joined): the row's ``kernel`` column."""
    return KERNEL_CACHE.take_used()


def compiled_kernel_available() -> bool:
    """True when the fused kernels compile and run here (tries once on a tiny tensor)."""
    if _state["broken"] is not None:
        return False
    try:
        # the nf4 / fp32 / absmax / fp16-constant graph: the one most sweeps use anyway
        x = torch.linspace(-1, 1, 128).view(2, 64)
        _run_compiled_("select", x, nf_codebook(4), QuantSpec(4, "nf"))
        return True
    except Exception as err:
        _state["broken"] = repr(err)
        log.warning("fused quantization kernel unavailable (%s)", err)
        return False
