"""ggml's scalar float32 arithmetic, reproduced on tensors (the building blocks of every GGUF kernel).

ggml's reference quantizers are plain C loops over one block in float32 (no FMA in
``libggml-base``, no fast-math). To give the same bytes, kscale keeps the same float32 operations
in the same order, vectorised *across* blocks instead of along one:

- a C accumulation ``s += t[i]`` is a left-to-right float32 sum: :func:`seq_sum` loops over the
  positions of a block (32 or 256 of them) and adds whole columns of blocks at once; ``torch.sum``
  would add pairwise and round differently;
- ``nearest_int`` (the magic-number ``x + 1.5·2^23`` trick) is round-half-to-even, i.e.
  ``torch.round``, for every |x| < 2^22 (the range ggml asserts); C's ``roundf`` is half away from
  zero (:func:`round_away`); a C cast ``(int8_t)f`` truncates (``torch.trunc``);
- ``if (v > best) {best = v; arg = x}`` keeps the *first* extreme: ``torch.argmax``/``argmin``
  also return the first index, so :func:`first_abs_max` etc. pick the same element, including the
  sign of a zero (which ends up in an fp16 constant);
- torch's own float32 ``sqrt`` on AVX-512 CPUs and its ``scalar / tensor`` (a reciprocal, then a
  product) are not correctly rounded: :func:`sqrt` goes through float64 (exact after rounding back,
  as for every basic operation) and numerators are float32 tensors (:func:`f32`), never Python numbers;
- ``GGML_FP32_TO_FP16`` rounds to nearest even with overflow to inf: exactly ``.to(float16)``.

Tensors of per-position work are *position-major* ([positions, blocks]) so every step of a
sequential loop reads one contiguous row.
"""
from __future__ import annotations

import torch

#: ggml's threshold below which a group counts as all zero (GROUP_MAX_EPS)
GROUP_MAX_EPS = 1e-15


def f32(value: float) -> torch.Tensor:
    """A C ``float`` literal such as ``0.1f``: the value rounded to float32 once."""
    return torch.tensor(value, dtype=torch.float32)


def sqrt(x: torch.Tensor) -> torch.Tensor:
    """C ``sqrtf``, correctly rounded (through float64; torch's vectorised float32 sqrt is not)."""
    return x.double().sqrt().to(x.dtype)


def nearest_int(x: torch.Tensor) -> torch.Tensor:
    """ggml's ``nearest_int`` as a float32 tensor of integers (round half to even)."""
    return torch.round(x)


def round_away(x: torch.Tensor) -> torch.Tensor:
    """C ``roundf``: to nearest, halves away from zero (exact: ``x - trunc(x)`` has no rounding)."""
    t = torch.trunc(x)
    return t + torch.sign(x) * ((x - t).abs() >= 0.5).to(x.dtype)


def fp16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``GGML_FP32_TO_FP16`` then back: (the float32 value ggml reads back, the fp16 tensor to store)."""
    h = x.to(torch.float16)
    return h.to(torch.float32), h


def seq_sum(t: torch.Tensor, *, from_zero: bool = True) -> torch.Tensor:
    """Left-to-right float32 sum over dim 0 (``float s = 0; for (...) s += t[i];``).

    ``from_zero=False`` is ``float s = t[0]; for (i = 1; ...) s += t[i];`` (differs only in the
    sign of an all-negative-zero sum)."""
    acc = t[0] + 0.0 if from_zero else t[0].clone()
    for i in range(1, t.shape[0]):
        acc += t[i]
    return acc


def _gather(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.gather(x, dim, index.unsqueeze(dim)).squeeze(dim)


def first_abs_max(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``amax = 0; if (|x| > amax) {amax = |x|; max = x}``: (amax, signed max), +0 for an all-zero group."""
    ax = x.abs()
    amax, index = ax.max(dim=dim)  # ties: torch returns the first index, as the C loop keeps it
    signed = _gather(x, index, dim)
    return amax, torch.where(amax > 0, signed, torch.zeros_like(signed))


def first_min(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``min = x[0]; if (x < min) min = x``: the first minimal element (sign of a zero included)."""
    return _gather(x, x.argmin(dim=dim), dim)


def first_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``max = x[0]; if (x > max) max = x``: the first maximal element."""
    return _gather(x, x.argmax(dim=dim), dim)


def best_index_int8(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ggml's ``best_index_int8``: index of the nearest of sorted codes ``values`` (ties go up).

    The C binary search ends with ``val[mu-1] <= x < val[mu]`` and picks ``mu-1`` only when
    ``x - val[mu-1] < val[mu] - x`` in float32; ``x`` at or beyond an end clamps to it."""
    n = values.numel()
    mu = torch.bucketize(x, values, right=True).clamp_(1, n - 1)  # number of codes <= x
    lo, hi = values[mu - 1], values[mu]
    index = torch.where((x - lo) < (hi - x), mu - 1, mu)
    index = torch.where(x <= values[0], 0, index)
    return torch.where(x >= values[-1], n - 1, index)


def pack_nibbles(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``low | high << 4`` as uint8 (codes given as float or integer tensors in 0..15)."""
    return (low.to(torch.uint8) & 0xF) | ((high.to(torch.uint8) & 0xF) << 4)


def pack_bit_planes(bits: torch.Tensor) -> torch.Tensor:
    """[..., 8, n] of 0/1 -> [..., n] uint8 with plane k in bit k."""
    shifts = torch.arange(8, dtype=torch.uint8).view(*([1] * (bits.dim() - 2)), 8, 1)
    return (bits.to(torch.uint8) << shifts).sum(dim=-2, dtype=torch.uint8)


def fp16_bytes(h: torch.Tensor) -> torch.Tensor:
    """fp16 tensor [...] -> its little-endian bytes [..., 2]."""
    return h.contiguous().view(torch.uint8).view(*h.shape, 2)


def bytes_fp16(b: torch.Tensor) -> torch.Tensor:
    """Little-endian bytes [..., 2] -> float32 of the fp16 they hold, [..., 1] (broadcasts over a block)."""
    return b.contiguous().view(torch.float16).to(torch.float32)


def u32_bytes(v: torch.Tensor) -> torch.Tensor:
    """int64 tensor of values < 2^32 -> its little-endian bytes [..., 4]."""
    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64)
    return ((v.unsqueeze(-1) >> shifts) & 0xFF).to(torch.uint8)


def bytes_u32(b: torch.Tensor) -> torch.Tensor:
    """Little-endian bytes [..., 4] -> int64 values."""
    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64)
    return (b.to(torch.int64) << shifts).sum(dim=-1)
