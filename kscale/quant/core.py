"""Block-wise k-bit quantization of one tensor: layout, constants, nearest code, storage.

The recipe is the paper's (Dettmers & Zettlemoyer 2022, §2.2-2.3; bitsandbytes
``quantize_blockwise``): flatten row-major, cut into blocks of ``blocksize`` values (the ragged
last block gets its own constant), normalise each block by its absmax (or, ``centered``, by its
range), replace every value by the nearest code, dequantize by lookup times the constant.

Worked example, ``w`` of shape [3, 100], blocksize 64: 300 values -> blocks [0:64], [64:128],
..., [256:300] (5 blocks, the last one holds 44 values; blocks cross row boundaries, which is
why the paper calls it blocking and not grouping). ``blocksize=None``: 3 blocks of 100 (rows).

Primitives used by other quantizers (GPTQ, issue 7) are :func:`block_constants` (constants
already rounded to their stored precision) and :func:`nearest_code` (the rounding rule).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from kscale.quant import _fast, reference
from kscale.quant.dtypes import DTYPES, quantile_codebook
from kscale.quant.spec import QuantSpec

log = logging.getLogger(__name__)

__all__ = [
    "BlockLayout",
    "QuantizedTensor",
    "block_constants",
    "block_layout",
    "codebook",
    "fake_quantize",
    "fake_quantize_",
    "nearest_code",
    "normalize_blocks",
    "quantize",
    "store_constant",
    "to_blocks",
]

_FP16_MAX = 65504.0
#: storage cost of one entry of a data-dependent (quantile) codebook, stored per tensor
CODEBOOK_ENTRY_BITS = 16


@dataclass(frozen=True)
class BlockLayout:
    """How a tensor of ``numel`` values is cut into ``n_blocks`` blocks of ``blocksize``.

    The last block is ragged when ``numel % blocksize != 0``; :func:`to_blocks` pads it by
    repeating its own last value, which leaves its absmax, max and min unchanged.
    """

    numel: int
    blocksize: int
    n_blocks: int

    @property
    def padded(self) -> int:
        return self.n_blocks * self.blocksize


def block_layout(shape: torch.Size | tuple[int, ...], blocksize: int | None) -> BlockLayout:
    """Layout for a tensor of ``shape``; ``blocksize=None`` = one block per output row (dim 0)."""
    numel = 1
    for d in shape:
        numel *= int(d)
    if numel == 0:
        raise ValueError(f"cannot quantize an empty tensor; got shape {tuple(shape)}")
    if blocksize is None:
        rows = int(shape[0]) if len(shape) >= 2 else 1
        return BlockLayout(numel, numel // rows, rows)
    return BlockLayout(numel, blocksize, -(-numel // blocksize))


def to_blocks(w: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """``w`` flattened row-major as [n_blocks, blocksize], same dtype (a view when not ragged)."""
    flat = w.reshape(-1)
    pad = layout.padded - layout.numel
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(layout.n_blocks, layout.blocksize)


def store_constant(values: torch.Tensor, scale_bits: int) -> torch.Tensor:
    """Round float32 constants to the precision they are stored at, returned as float32.

    16 -> fp16 (clamped to the largest finite fp16 so a huge block cannot become inf);
    32 -> fp32 unchanged. Dequantization multiplies by exactly these values.
    """
    if scale_bits == 16:
        return values.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).float()
    return values.float()


def block_constants(
    x_blocks: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-block constants, already rounded to ``spec.scale_bits``.

    Args:
        x_blocks: [n_blocks, blocksize] values (any float dtype; computed in float32).
        spec: uses ``centered`` and ``scale_bits``.

    Returns:
        ``(scale, offset)``, each [n_blocks, 1] float32 holding the *stored* values; ``offset`` is
        ``None`` unless ``spec.centered``. absmax: scale = max|x|. centered: offset = (max+min)/2,
        scale = (max-min)/2. A value x is normalised as (x - offset) / scale (see
        :func:`normalize_blocks`) and dequantized as code * scale + offset.
    """
    return reference.constants(x_blocks.float(), spec.centered, spec.scale_bits)


def normalize_blocks(
    x_blocks: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None
) -> torch.Tensor:
    """(x - offset) / scale in float32; blocks whose stored scale is 0 normalise to 0."""
    return reference.normalize(x_blocks.float(), scale, offset)


def nearest_code(
    x_normalized: torch.Tensor, code: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest entry of a sorted codebook for every value (the paper's arg-min rule).

    Implemented as bitsandbytes does: the index is the number of midpoints between neighbouring
    codes that lie strictly below the value (``torch.bucketize``), so an exact tie goes to the
    lower code. Values outside [-1, 1] go to the extreme codes.

    Args:
        x_normalized: any shape, float32.
        code: [n] sorted codebook (float32, same device).

    Returns:
        ``(indices, values)``: int64 indices into ``code`` and the code values, shape of the input.
    """
    code = code.to(device=x_normalized.device, dtype=torch.float32)
    mids = reference.midpoints(code)
    idx = reference.bucket_index(x_normalized.float(), mids)
    return idx, code[idx]


def codebook(spec: QuantSpec, w: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted float32 code values in [-1, 1] for ``spec`` (at most 2^bits distinct values).

    ``w`` is required for data-dependent types (``quantile``): the codebook is then estimated
    from ``w`` normalised block-wise exactly as :func:`quantize` will normalise it, and rounded
    to the 16-bit precision it is stored at.
    """
    if spec.is_baseline:
        raise ValueError("bits=16 is the unquantized baseline and has no codebook; got bits=16")
    dtype = DTYPES.get(spec.dtype)
    if not dtype.data_dependent:
        assert dtype.build is not None
        return dtype.build(spec.bits, spec.exponent_bits)
    if w is None:
        raise ValueError(
            f"dtype {spec.dtype!r} is data dependent: codebook(spec, w) needs the tensor w"
        )
    layout = block_layout(w.shape, spec.blocksize)
    xb = to_blocks(w.detach(), layout).float()
    scale, offset = block_constants(xb, spec)
    return _quantile_from_blocks(normalize_blocks(xb, scale, offset), layout, spec.bits)


def _quantile_from_blocks(xn: torch.Tensor, layout: BlockLayout, bits: int) -> torch.Tensor:
    values = xn.reshape(-1)[: layout.numel]  # padding repeats a value: leave it out
    code = quantile_codebook(values, bits)
    return store_constant(code, CODEBOOK_ENTRY_BITS).sort().values


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """Compact storage of one quantized tensor.

    Attributes:
        codes: uint8 code indices in row-major order; two 4-bit indices per byte (low nibble
            first) when ``bits <= 4``, one per byte otherwise.
        scale: [n_blocks] block scales stored as fp16 (scale_bits=16) or fp32 (32).
        offset: [n_blocks] block offsets (``centered``), same dtype, else ``None``.
        code: the codebook; for ``quantile`` it is part of the stored data (fp16 values).
        shape, dtype: of the original tensor (``dequantize`` returns that dtype).
        spec: the :class:`QuantSpec` used; ``layout``: the block layout.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor | None
    code: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    spec: QuantSpec
    layout: BlockLayout

    @property
    def packed(self) -> bool:
        return self.spec.bits <= 4

    def indices(self) -> torch.Tensor:
        """Unpacked code indices, int64, [numel]."""
        if not self.packed:
            return self.codes.long()
        both = torch.stack([self.codes & 0x0F, self.codes >> 4], dim=1).reshape(-1)
        return both[: self.layout.numel].long()

    def dequantize(self) -> torch.Tensor:
        """code[index] * scale (+ offset), with the constants exactly as stored."""
        bs = self.layout.blocksize
        n = self.layout.numel
        values = self.code.float()[self.indices()]
        scale = self.scale.float().repeat_interleave(bs)[:n]
        out = values * scale
        if self.offset is not None:
            out = out + self.offset.float().repeat_interleave(bs)[:n]
        return out.view(self.shape).to(self.dtype)

    @property
    def payload_bits(self) -> int:
        """k bits per value (what a bit-packed format stores; nibbles here when k <= 4)."""
        return self.layout.numel * self.spec.bits

    @property
    def constant_bits(self) -> int:
        """Stored block constants, plus a data-dependent codebook (2^k x 16 bits)."""
        n = self.scale.numel() * self.spec.scale_bits
        if self.offset is not None:
            n += self.offset.numel() * self.spec.scale_bits
        if DTYPES.get(self.spec.dtype).data_dependent:
            n += self.code.numel() * CODEBOOK_ENTRY_BITS
        return n


def _check_input(w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        got = w.dtype if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"quantization needs a floating-point tensor (fp32, fp16, bf16); got {got}")


def quantize(w: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    """Quantize ``w`` block-wise to ``spec`` (nearest code for every value).

    Raises:
        ValueError: for ``bits=16`` (nothing to quantize; use :func:`fake_quantize`, the identity).
    """
    _check_input(w)
    if spec.is_baseline:
        raise ValueError(
            "quantize() needs bits in 2..8; bits=16 is the unquantized baseline "
            "(fake_quantize returns the tensor unchanged); got bits=16"
        )
    w = w.detach()
    layout = block_layout(w.shape, spec.blocksize)
    xb = to_blocks(w, layout).float()
    scale, offset = block_constants(xb, spec)
    xn = normalize_blocks(xb, scale, offset)
    if DTYPES.get(spec.dtype).data_dependent:
        code = _quantile_from_blocks(xn, layout, spec.bits)
    else:
        code = codebook(spec).to(w.device)
    idx, _ = nearest_code(xn, code)
    idx = idx.reshape(-1)[: layout.numel].to(torch.uint8)
    if spec.bits <= 4:
        if idx.numel() % 2:
            idx = torch.cat([idx, idx.new_zeros(1)])
        idx = idx[0::2] | (idx[1::2] << 4)
    store = torch.float16 if spec.scale_bits == 16 else torch.float32
    return QuantizedTensor(
        codes=idx.contiguous(),
        scale=scale.reshape(-1).to(store),
        offset=None if offset is None else offset.reshape(-1).to(store),
        code=code,
        shape=w.shape,
        dtype=w.dtype,
        spec=spec,
        layout=layout,
    )


def fake_quantize(w: torch.Tensor, spec: QuantSpec, *, kernel: str | None = None) -> torch.Tensor:
    """Quantize then dequantize: same shape, dtype and device as ``w``; equals
    ``quantize(w, spec).dequantize()`` exactly. ``bits=16`` returns an unchanged copy.

    A fresh (contiguous) copy of ``w`` quantized by :func:`fake_quantize_`; a sweep that owns
    the weight should call :func:`fake_quantize_` directly and skip the copy.

    Args:
        kernel: ``"eager"`` (plain torch ops, the reference), ``"compiled"`` (fused
            ``torch.compile`` kernel, CPU) or ``None`` = :func:`kscale.quant.set_kernel`'s setting
            (default ``"auto"``: compiled for large CPU tensors when a compiler works, else eager).
            Both give bit-identical results.
    """
    _check_input(w)
    out = w.detach().clone(memory_format=torch.contiguous_format)
    return fake_quantize_(out, spec, kernel=kernel)


#: values per chunk when a non-contiguous matrix is quantized through a contiguous buffer
STRIDED_CHUNK_NUMEL = 1 << 20


def fake_quantize_(w: torch.Tensor, spec: QuantSpec, *, kernel: str | None = None) -> torch.Tensor:
    """:func:`fake_quantize` written into ``w``'s own storage; returns ``w``.

    Why: a sweep quantizes the same loaded weights dozens of times, and writing the result back
    where it came from costs one pass over warm memory, where a new full-size output pays page
    faults on fresh memory first (~5x an ``out.copy_`` on CPU). Bit-identical to
    :func:`fake_quantize`; a :class:`kscale.quant.WeightSnapshot` taken before undoes it.

    Only small temporaries are allocated: a contiguous ``w`` is quantized where it lies (the
    ragged last block through a one-block copy); a non-contiguous 2-D ``w`` (``Conv1D``'s
    transposed weight seen as [out, in]) goes through a contiguous buffer of
    ``STRIDED_CHUNK_NUMEL`` values, whole blocks at a time. ``bits=16`` leaves ``w`` unchanged.
    """
    _check_input(w)
    if spec.is_baseline:
        return w
    with torch.no_grad():
        t = w.detach()
        layout = block_layout(t.shape, spec.blocksize)
        if DTYPES.get(spec.dtype).data_dependent:
            code = codebook(spec, t).to(t.device)
        else:
            code = codebook(spec).to(t.device)
        mode = _fast.resolve_kernel(kernel, layout.numel, t.device)
        strict = (kernel or _fast.get_kernel()) == "compiled"
        if t.is_contiguous():
            _flat_(t.view(-1), layout.blocksize, code, spec, mode, strict)
        elif t.dim() == 2:
            _strided_rows_(t, layout, code, spec, mode, strict)
        else:  # no such weight in the study; correct, with one full-size temporary
            tmp = t.contiguous()
            _flat_(tmp.view(-1), layout.blocksize, code, spec, mode, strict)
            t.copy_(tmp)
    return w


def _flat_(flat: torch.Tensor, blocksize: int, code, spec: QuantSpec, mode: str, strict: bool) -> None:
    """Quantize a contiguous 1-D run of whole blocks (the last one may be ragged) in place."""
    n_full = flat.numel() // blocksize
    body = n_full * blocksize
    if n_full:
        _fast.fake_quantize_blocks_(flat[:body].view(n_full, blocksize), code, spec, kernel=mode,
                                    strict=strict)
    rest = flat.numel() - body
    if rest:  # padded by repeating its last value, which leaves absmax/max/min unchanged
        tail = flat[body:]
        block = torch.cat([tail, tail[-1:].expand(blocksize - rest)]).view(1, blocksize)
        _fast.fake_quantize_blocks_(block, code, spec, kernel="eager", record=False)
        tail.copy_(block.view(-1)[:rest])


def _strided_rows_(t: torch.Tensor, layout: BlockLayout, code, spec: QuantSpec, mode: str,
                   strict: bool) -> None:
    """A non-contiguous [R, C] matrix, a few rows at a time through one contiguous buffer.

    A chunk must start on a block boundary: row r starts at value r*C, so chunks are multiples
    of u = B / gcd(C, B) rows (u = 1 when blocks are rows).
    """
    rows, cols = t.shape
    b = layout.blocksize
    unit = 1 if b == cols else b // math.gcd(cols, b)
    step = unit * max(1, STRIDED_CHUNK_NUMEL // (unit * cols))
    buf = torch.empty(min(step, rows) * cols, dtype=t.dtype, device=t.device)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        part = buf[: (r1 - r0) * cols]
        part.view(r1 - r0, cols).copy_(t[r0:r1])
        _flat_(part, b, code, spec, mode, strict)
        t[r0:r1].copy_(part.view(r1 - r0, cols))
