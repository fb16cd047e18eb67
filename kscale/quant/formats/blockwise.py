"""Format ``blockwise`` (the default): the paper's k-bit data types with block-wise constants.

Dettmers & Zettlemoyer 2022, §2: int / float / dynamic / quantile / nf codes, blocks of
``blocksize`` values each with an absmax (or centered: scale and offset) constant stored at
``scale_bits``, optionally ``outlier_frac`` of the input columns kept in 16 bit. Its config is
:class:`kscale.quant.QuantSpec`; the kernels are :mod:`kscale.quant.core` (unchanged, so every
number is bit-identical to the study before formats were objects).

Storage cost of an [out, in] matrix with ``c`` kept columns (the ledger's only source):
``k`` bits per quantized value; ``n_blocks x scale_bits`` per constant kind (two kinds when
centered); ``2^k x 16`` bits of codebook for data-dependent types; 16 bits per kept value.
"""
from __future__ import annotations

from typing import Any

import torch

from kscale.quant.core import CODEBOOK_ENTRY_BITS, block_layout, fake_quantize_, quantize
from kscale.quant.dtypes import DTYPES
from kscale.quant.formats.base import F16_BITS, StorageFormat, TensorCost, register_format
from kscale.quant.formats.bitpack import pack_bits
from kscale.quant.spec import QuantSpec

__all__ = ["BlockwiseFormat"]


class BlockwiseFormat(StorageFormat):
    name = "blockwise"
    config_class = QuantSpec
    axes = ("dtype", "bits", "blocksize", "centered", "exponent_bits", "scale_bits", "outlier_frac")
    description = "the paper's k-bit data types with one constant per block (Dettmers & Zettlemoyer 2022)"

    def fake_quantize_(self, w: torch.Tensor, config: QuantSpec, *, imatrix=None,
                       kernel: str | None = None, **_: Any) -> torch.Tensor:
        return fake_quantize_(w, config, kernel=kernel)

    def tensor_cost(self, shape: tuple[int, ...], config: QuantSpec, n_kept_columns: int = 0) -> TensorCost:
        out_f, in_f = int(shape[0]), int(shape[1])
        numel = out_f * in_f
        if config.is_baseline:
            return TensorCost(numel * F16_BITS)
        kept = out_f * n_kept_columns
        q_numel = numel - kept
        constant_bits = 0
        if q_numel:
            layout = block_layout((out_f, in_f - n_kept_columns), config.blocksize)
            n_constants = layout.n_blocks * (2 if config.centered else 1)
            constant_bits = n_constants * config.scale_bits
            if DTYPES.get(config.dtype).data_dependent:
                constant_bits += 2**config.bits * CODEBOOK_ENTRY_BITS
        return TensorCost(q_numel * config.bits, constant_bits, kept * F16_BITS)

    def pack(self, w: torch.Tensor, config: QuantSpec) -> bytes:
        """k-bit code indices packed LSB first (``numel x k`` bits, padded to a whole byte), then
        the block scales (and offsets) at ``scale_bits``, then a data-dependent codebook (fp16)."""
        if config.is_baseline:
            return w.detach().to(torch.float16).contiguous().cpu().numpy().tobytes()
        q = quantize(w, config)
        parts = [pack_bits(q.indices(), config.bits)]
        parts.append(q.scale.contiguous().cpu().numpy().tobytes())
        if q.offset is not None:
            parts.append(q.offset.contiguous().cpu().numpy().tobytes())
        if DTYPES.get(config.dtype).data_dependent:
            parts.append(q.code.to(torch.float16).cpu().numpy().tobytes())
        return b"".join(parts)

    def check_method(self, method: str) -> None:
        """Every registered method runs the blockwise format."""


register_format(BlockwiseFormat())
