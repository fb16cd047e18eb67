"""Storage formats as registered objects (issue 18): ``FORMATS`` and the two entry points.

>>> import torch
>>> from kscale.quant import fake_quantize, pack
>>> w = torch.randn(8, 256)
>>> fake_quantize(w, "blockwise", bits=4, dtype="nf", blocksize=64).shape
torch.Size([8, 256])
>>> len(pack(w, "blockwise", bits=4, blocksize=64)) * 8   # 4 bits x 2048 + 32 fp16 scales
8704

Adding a format is one module here that defines a :class:`StorageFormat` subclass and calls
:func:`register_format` (plus its import line below). See ``blockwise.py`` (the paper's types),
``gguf.py`` (llama.cpp's block types) and ``mx.py`` (microscaling).
"""
from __future__ import annotations

from typing import Any

import torch

from kscale.quant.formats.base import (
    DEFAULT_FORMAT,
    FORMATS,
    StorageFormat,
    TensorCost,
    format_of,
    register_format,
    resolve_format,
)
from kscale.quant.formats import blockwise as _blockwise  # noqa: F401  (registers "blockwise")
from kscale.quant.formats import gguf as _gguf  # noqa: F401  (registers q4_0 ... iq4_xs)
from kscale.quant.formats import mx as _mx  # noqa: F401  (registers mxfp4 ... nvfp4, gguf_*)
from kscale.quant.formats import gguf_file as _gguf_file  # noqa: F401  (registers ftype_q2_k_s ... ftype_q8_0)

__all__ = ["DEFAULT_FORMAT", "FORMATS", "StorageFormat", "TensorCost", "fake_quantize", "fake_quantize_",
           "format_of", "pack", "register_format", "resolve_format"]


def fake_quantize(w: torch.Tensor, fmt: Any, *, kernel: str | None = None,
                  imatrix: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
    """Quantize then dequantize ``w`` in format ``fmt``: a new tensor, same shape and dtype.

    ``fmt`` is a format config (a :class:`kscale.quant.QuantSpec` for ``blockwise``) or a
    registered name with its options: ``fake_quantize(w, "q4_k")``,
    ``fake_quantize(w, "blockwise", bits=4, dtype="nf", blocksize=64)``. ``kernel`` picks the
    blockwise kernel (see :func:`kscale.quant.core.fake_quantize`); ``imatrix`` is the importance
    matrix of a GGUF type configured with ``imatrix=True``.
    """
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        got = w.dtype if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"quantization needs a floating-point tensor (fp32, fp16, bf16); got {got}")
    out = w.detach().clone(memory_format=torch.contiguous_format)
    return fake_quantize_(out, fmt, kernel=kernel, imatrix=imatrix, **options)


def fake_quantize_(w: torch.Tensor, fmt: Any, *, kernel: str | None = None,
                   imatrix: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
    """:func:`fake_quantize` written into ``w``'s own storage; returns ``w``."""
    obj, config = resolve_format(fmt, options)
    if config.is_baseline:
        return w
    return obj.fake_quantize_(w, config, kernel=kernel, imatrix=imatrix)


def pack(w: torch.Tensor, fmt: Any, **options: Any) -> bytes:
    """The bytes format ``fmt`` stores for ``w`` (same ``fmt`` forms as :func:`fake_quantize`);
    ``8 * len(pack(w, fmt))`` equals the format's exact cost of ``w`` (up to byte padding of a
    k-bit payload that does not fill its last byte)."""
    obj, config = resolve_format(fmt, options)
    return obj.pack(w, config)
