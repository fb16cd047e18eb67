"""quantize_gguf / dequantize_gguf / fake_quantize_gguf: the public entry points of the GGUF kernels.

Each type's kernels (``quantize(w, imatrix) -> bytes``, ``dequantize(bytes) -> values``) register in
``KERNELS``; this module validates the input once, splits large matrices into row chunks (so the
per-position work tensors stay cache-sized and memory bounded) and keeps shapes. Bytes are ggml's
exact block layout (``ggml_quantize_chunk``'s output); values are what ``gguf.quants.dequantize``
returns for them, bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kscale.registry import Registry, did_you_mean

from . import iquants, kquants, kquants_low, legacy
from .search import use_numba
from .types import GGUF_TYPES, GGUFType

#: rows are quantized in chunks of about this many values
CHUNK_VALUES = 1 << 20


@dataclass(frozen=True)
class GGUFKernel:
    quantize: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # [rows, n] -> uint8 [rows, nbytes]
    dequantize: Callable[[torch.Tensor], torch.Tensor]  # uint8 [..] -> float32 [blocks, block_values]
    one_pass_ref: bool = False  # without an imatrix, a fused numba pass with no large temporaries: no chunking


KERNELS: Registry[GGUFKernel] = Registry("GGUF kernel")
_ONE_PASS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k")
for _module, _names in ((legacy, ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")), (kquants, ("q4_k", "q5_k", "q6_k")),
                        (kquants_low, ("q2_k", "q3_k")), (iquants, ("iq4_nl", "iq4_xs"))):
    for _name in _names:
        KERNELS.register(_name, GGUFKernel(getattr(_module, f"quantize_{_name}"), getattr(_module, f"dequantize_{_name}"),
                                           _name in _ONE_PASS))


def gguf_type(name: str) -> GGUFType:
    """The GGUFType called ``name`` (ValueError naming the known types otherwise)."""
    try:
        return GGUF_TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown GGUF type {name!r}.{did_you_mean(str(name), list(GGUF_TYPES))} "
                         f"Available: {', '.join(GGUF_TYPES)}") from None


def _kernel(t: GGUFType) -> GGUFKernel:
    if t.name not in KERNELS.names():
        raise NotImplementedError(f"GGUF type {t.name!r} has no kscale kernel yet")
    return KERNELS.get(t.name)


def _check_matrix(w: torch.Tensor, t: GGUFType) -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"GGUF quantization takes a 2-D floating-point matrix [rows, n_per_row]; got {shape}")
    t.row_bytes(w.shape[1])
    w = w.detach().to(torch.float32).contiguous()
    lo, hi = torch.aminmax(w)  # one reduction pass, no mask tensor; NaN propagates
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise ValueError(f"{t.name}: the matrix has non-finite values (ggml's quantizers assume finite weights)")
    return w


def _check_imatrix(imatrix: torch.Tensor | None, t: GGUFType, w: torch.Tensor) -> torch.Tensor | None:
    if imatrix is None:
        return None
    if not t.takes_imatrix:
        raise ValueError(f"{t.name} takes no importance matrix (ggml ignores it); pass imatrix=None")
    if not isinstance(imatrix, torch.Tensor) or tuple(imatrix.shape) != (w.shape[1],):
        shape = tuple(imatrix.shape) if isinstance(imatrix, torch.Tensor) else type(imatrix).__name__
        raise ValueError(f"imatrix must hold one value per column, shape ({w.shape[1]},); got {shape}")
    imatrix = imatrix.detach().to(device=w.device, dtype=torch.float32).contiguous()
    if not torch.isfinite(imatrix).all() or (imatrix < 0).any():
        raise ValueError("imatrix values must be finite and >= 0 (means of squared activations)")
    return imatrix


def quantize_gguf(w: torch.Tensor, name: str, imatrix: torch.Tensor | None = None) -> torch.Tensor:
    """ggml's bytes for ``w`` [rows, n_per_row] in type ``name``: uint8 [rows, row bytes].

    Equal byte for byte to ``ggml_quantize_chunk(type, w, ..., imatrix)``. A row length that is
    not a multiple of the type's block raises ValueError (llama.cpp then picks another type).
    """
    t = gguf_type(name)
    w = _check_matrix(w, t)
    imatrix = _check_imatrix(imatrix, t, w)
    kernel = _kernel(t)
    rows, rows_per_chunk = w.shape[0], max(1, CHUNK_VALUES // w.shape[1])
    if rows <= rows_per_chunk or (imatrix is None and kernel.one_pass_ref and use_numba(w)):
        return kernel.quantize(w, imatrix)
    out = torch.empty(rows, t.row_bytes(w.shape[1]), dtype=torch.uint8, device=w.device)
    for start in range(0, rows, rows_per_chunk):
        out[start:start + rows_per_chunk] = kernel.quantize(w[start:start + rows_per_chunk], imatrix)
    return out


def dequantize_gguf(data: torch.Tensor, name: str, n_per_row: int) -> torch.Tensor:
    """Values of ggml bytes ``data`` uint8 [rows, row bytes]: float32 [rows, n_per_row]
    (bit for bit ``gguf.quants.dequantize``)."""
    t = gguf_type(name)
    nbytes = t.row_bytes(int(n_per_row))
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != nbytes:
        shape = (tuple(data.shape), data.dtype) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"{t.name} rows of {n_per_row} values are uint8 [rows, {nbytes}]; got {shape}")
    rows = data.shape[0]
    return _kernel(t).dequantize(data.contiguous()).reshape(rows, int(n_per_row))


def fake_quantize_gguf(w: torch.Tensor, name: str, imatrix: torch.Tensor | None = None) -> torch.Tensor:
    """``dequantize_gguf(quantize_gguf(w, name, imatrix))``: float32, the shape of ``w``."""
    data = quantize_gguf(w, name, imatrix)
    return dequantize_gguf(data, name, w.shape[1])
