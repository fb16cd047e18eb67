"""llama.cpp's per-tensor GGUF block types as formats: ``q4_0 ... q6_k, iq4_nl, iq4_xs``.

The kernels (byte-exact with ggml's reference quantizer) are :mod:`kscale.quant.gguf`; this
module only makes each type a registered format: its config (``imatrix`` for the types that
take an importance matrix), its exact cost, its bytes and its row.

A row of a GGUF type has ``bits`` = the type's *nominal* bits (4 for q4_k, 6 for q6_k: the digit
in llama.cpp's name) and ``bits_per_param`` = the exact cost from ggml's block sizes (4.5 for
q4_k: 144 bytes per 256 values). ``payload_bits`` counts the nominal bits per value and
``constant_bits`` everything else in the blocks (scales, minima, quantized sub-block scales).

Row lengths that are not a multiple of the type's block: llama.cpp's quantizer
(``llama-quant.cpp``, ``tensor_type_fallback``) then stores the tensor in a fallback type --
q2_k, q3_k -> q4_0; iq4_xs -> iq4_nl; q4_k -> q5_0; q5_k -> q5_1; q6_k -> q8_0 -- and in F16
when that does not fit either (and for the 32-value types). The format asks the one rule in
:func:`kscale.quant.gguf.recipes.tensor_type_fallback` (the file-type recipes ask it too), and
the ledger counts the type actually stored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from kscale.quant.formats.base import (
    F16_BITS,
    NamedTypeConfig,
    StorageFormat,
    TensorCost,
    register_format,
)
from kscale.quant.gguf import GGUF_TYPES, fake_quantize_gguf, quantize_gguf
from kscale.quant.gguf.recipes import tensor_type_fallback

__all__ = ["GGUFTypeConfig", "ImatrixTypeConfig", "GGUFTypeFormat", "nominal_bits", "stored_type"]

F16 = "f16"


def nominal_bits(name: str) -> int:
    """The digit in llama.cpp's type name: q4_k -> 4, iq4_nl -> 4, q8_0 -> 8."""
    match = re.search(r"\d", name)
    if match is None:
        raise ValueError(f"GGUF type name {name!r} has no nominal bit count")
    return int(match.group())


def stored_type(name: str, n_per_row: int) -> str:
    """The type llama.cpp stores a tensor with rows of ``n_per_row`` values in (or ``f16``)."""
    return tensor_type_fallback(name, n_per_row)


@dataclass(frozen=True)
class ImatrixTypeConfig(NamedTypeConfig):
    """What a GGUF per-tensor type and a llama.cpp file type share: the ``imatrix`` switch, read
    against the GGUF type that decides whether an importance matrix applies (``gguf_type``)."""

    imatrix: bool = False

    @property
    def gguf_type(self) -> str:
        raise NotImplementedError

    @property
    def takes_imatrix(self) -> bool:
        return self.gguf_type in GGUF_TYPES and GGUF_TYPES[self.gguf_type].takes_imatrix

    @property
    def needs_calibration(self) -> bool:
        return self.imatrix

    @property
    def bits(self) -> int:
        return nominal_bits(self.gguf_type)

    @property
    def label(self) -> str:
        return self.name + ("-imatrix" if self.imatrix else "")

    def to_row(self) -> dict[str, Any]:
        row = super().to_row()
        if self.takes_imatrix:
            row["imatrix"] = self.imatrix
        return row


@dataclass(frozen=True)
class GGUFTypeConfig(ImatrixTypeConfig):
    """A GGUF block type; ``imatrix`` = weight the rounding error by the calibration importance
    matrix (only for the types that take one; see :class:`GGUFTypeFormat`)."""

    def __post_init__(self) -> None:
        types = GGUF_TYPES
        if self.name not in types:
            raise ValueError(f"unknown GGUF type {self.name!r}; types: {', '.join(sorted(types))}")
        if not isinstance(self.imatrix, bool):
            raise ValueError(f"imatrix must be true or false; got {self.imatrix!r}")
        if self.imatrix and not self.takes_imatrix:
            raise ValueError(f"GGUF type {self.name} does not take an importance matrix; "
                             "set imatrix=false")

    @property
    def gguf_type(self) -> str:
        return self.name


class GGUFTypeFormat(StorageFormat):
    """One GGUF block type (one registered instance per type)."""

    config_class = GGUFTypeConfig

    def __init__(self, gtype: Any) -> None:
        self.name = gtype.name
        self.gtype = gtype
        self.axes = ("imatrix",) if gtype.takes_imatrix else ()
        self.description = (f"llama.cpp {gtype.name.upper()}: {gtype.block_values} values in "
                            f"{gtype.block_bytes} bytes")

    def option_names(self) -> list[str]:
        return list(self.axes)

    def _build(self, options):
        return GGUFTypeConfig(self.name, **options)

    def stored_type(self, shape, config: GGUFTypeConfig) -> str:
        """This type, its fallback, or ``f16`` (llama.cpp's rule, for the ``stored_types`` census)."""
        return stored_type(self.name, int(shape[-1]))

    def fake_quantize_(self, w: torch.Tensor, config: GGUFTypeConfig, *,
                       imatrix: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        if config.imatrix and imatrix is None:
            raise ValueError(f"format {self.name} with imatrix=true needs the importance matrix "
                             "(mean of x^2 per input column over the calibration tokens)")
        kind = stored_type(self.name, int(w.shape[1]))
        with torch.no_grad():
            if kind == F16:
                w.copy_(w.to(torch.float16))
                return w
            im = imatrix if config.imatrix and GGUF_TYPES[kind].takes_imatrix else None
            src = w.detach().float().contiguous()
            w.copy_(fake_quantize_gguf(src, kind, None if im is None else im.float().to(src.device)))
        return w

    def tensor_cost(self, shape, config: GGUFTypeConfig, n_kept_columns: int = 0) -> TensorCost:
        if n_kept_columns:
            raise ValueError(f"format {self.name} keeps no 16-bit columns (outlier_frac is a "
                             "blockwise option)")
        rows, n_per_row = int(shape[0]), int(shape[1])
        kind = stored_type(self.name, n_per_row)
        numel = rows * n_per_row
        if kind == F16:
            return TensorCost(0, 0, numel * F16_BITS)
        t = GGUF_TYPES[kind]
        total = rows * (n_per_row // t.block_values) * t.block_bytes * 8
        payload = numel * nominal_bits(kind)
        return TensorCost(payload, total - payload)

    def pack(self, w: torch.Tensor, config: GGUFTypeConfig, imatrix: torch.Tensor | None = None) -> bytes:
        """ggml's block bytes, row after row (F16 values for a tensor llama.cpp cannot block)."""
        w2 = w.detach().reshape(w.shape[0], -1)
        kind = stored_type(self.name, int(w2.shape[1]))
        if kind == F16:
            return w2.to(torch.float16).contiguous().cpu().numpy().tobytes()
        im = imatrix if config.imatrix and GGUF_TYPES[kind].takes_imatrix else None
        data = quantize_gguf(w2.float().contiguous(), kind, im)
        return data.contiguous().cpu().numpy().tobytes()


def register_all() -> list[str]:
    """Register every type of :data:`kscale.quant.gguf.GGUF_TYPES`."""
    return [register_format(GGUFTypeFormat(t)).name for _, t in sorted(GGUF_TYPES.items())]


register_all()
