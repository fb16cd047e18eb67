"""``QuantSpec``: what one quantization cell of the k-bit study is, validated at construction.

A spec is the identity of a cell (it goes into every result row via :meth:`QuantSpec.to_row`),
so bad values must fail at construction with a message that says the rule, the value received
and what is allowed -- a typo in a sweep config should cost seconds, not a cluster allocation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kscale.quant.dtypes import DTYPES

__all__ = ["QuantSpec", "BASELINE_BITS", "SCALE_BITS"]

BASELINE_BITS = 16
#: precision at which block constants can be stored: fp16 (the paper's convention, §5.2)
#: or fp32 (what bitsandbytes actually stores, so 4.5 bits/param at B=64).
SCALE_BITS = (16, 32)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class QuantSpec:
    """One k-bit quantization setting (Dettmers & Zettlemoyer 2022, §2).

    Args:
        bits: k, bits per quantized weight, 2..8; 16 is the unquantized 16-bit baseline
            (fake-quantization is the identity and each weight costs 16 bits).
        dtype: data type name in :data:`kscale.quant.DTYPES` (int, float, dynamic, quantile, nf).
        blocksize: values per block; the tensor is flattened row-major and cut into blocks,
            each with its own constant, a ragged last block gets its own (§2.3 "blocking").
            ``None`` = one constant per output row.
        exponent_bits: exponent bits of ``float`` (default ceil(bits/2), App. C.4) or the maximum
            exponent levels of ``dynamic`` (default bits-1); must be ``None`` for other types.
        centered: map each block by its range (offset=(max+min)/2, scale=(max-min)/2) instead of
            its absmax; both constants are stored and counted.
        scale_bits: precision each block constant is stored at: 16 (fp16) or 32 (fp32).
        outlier_frac: fraction of hidden dimensions kept in 16 bit by proxy quantization
            (§3, App. D; issue 7), 0 <= f < 0.5. Only validated and carried here.
    """

    bits: int
    dtype: str = "int"
    blocksize: int | None = 64
    exponent_bits: int | None = None
    centered: bool = False
    scale_bits: int = 16
    outlier_frac: float = 0.0

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or not (2 <= self.bits <= 8 or self.bits == BASELINE_BITS):
            raise ValueError(
                "bits must be an integer in 2..8, or 16 for the unquantized baseline; "
                f"got {self.bits!r}"
            )
        dtype = DTYPES.get(self.dtype)  # UnknownNameError (a ValueError) with did-you-mean
        if self.blocksize is not None and (not _is_int(self.blocksize) or self.blocksize < 2):
            raise ValueError(
                "blocksize must be an integer >= 2 (values sharing one constant), or None for "
                f"one constant per output row; got {self.blocksize!r}"
            )
        if self.exponent_bits is not None:
            if dtype.default_exponent_bits is None:
                with_exp = [n for n, d in DTYPES.items() if d.default_exponent_bits is not None]
                raise ValueError(
                    f"exponent_bits only applies to dtypes {', '.join(with_exp)}; got "
                    f"exponent_bits={self.exponent_bits!r} with dtype={self.dtype!r} "
                    "(leave it None)"
                )
            top = self.bits - 1 if not self.is_baseline else BASELINE_BITS - 1
            if not _is_int(self.exponent_bits) or not 1 <= self.exponent_bits <= top:
                raise ValueError(
                    f"exponent_bits must be an integer in 1..{top} for a {self.bits}-bit "
                    f"{self.dtype} (at least one exponent bit, the sign bit takes one more); "
                    f"got {self.exponent_bits!r}"
                )
        if not isinstance(self.centered, bool):
            raise ValueError(f"centered must be True or False; got {self.centered!r}")
        if self.scale_bits not in SCALE_BITS or not _is_int(self.scale_bits):
            raise ValueError(
                "scale_bits must be 16 (fp16 block constants, the paper's convention) or 32 "
                f"(fp32, what bitsandbytes stores); got {self.scale_bits!r}"
            )
        frac = self.outlier_frac
        if (
            isinstance(frac, bool)
            or not isinstance(frac, (int, float))
            or not math.isfinite(frac)
            or not 0.0 <= frac < 0.5
        ):
            raise ValueError(
                "outlier_frac must be a number with 0 <= outlier_frac < 0.5 (fraction of hidden "
                f"dimensions kept in 16 bit); got {frac!r}"
            )
        object.__setattr__(self, "outlier_frac", float(frac))

    @property
    def format(self) -> str:
        """The registered storage format this spec configures (``kscale.quant.formats``):
        ``QuantSpec`` is the config of the paper's block-wise format."""
        return "blockwise"

    @property
    def is_baseline(self) -> bool:
        """``bits == 16``: the unquantized 16-bit baseline."""
        return self.bits == BASELINE_BITS

    @property
    def resolved_exponent_bits(self) -> int | None:
        """Exponent bits actually used: the explicit value, else the type's default
        (ceil(bits/2) for float, App. C.4; bits-1 for dynamic); ``None`` for other types."""
        if self.exponent_bits is not None:
            return self.exponent_bits
        default = DTYPES.get(self.dtype).default_exponent_bits
        return None if default is None or self.is_baseline else default(self.bits)

    @property
    def label(self) -> str:
        """Short human name, e.g. ``nf4-b64``, ``float3-e2-b128-c``, ``int8-row-s32``."""
        if self.is_baseline:
            return "fp16"
        parts = [f"{self.dtype}{self.bits}"]
        if self.dtype == "float":
            parts.append(f"e{self.resolved_exponent_bits}")
        parts.append("row" if self.blocksize is None else f"b{self.blocksize}")
        if self.centered:
            parts.append("c")
        if self.scale_bits != 16:
            parts.append(f"s{self.scale_bits}")
        if self.outlier_frac:
            parts.append(f"o{self.outlier_frac:g}")
        return "-".join(parts)

    def to_row(self) -> dict[str, Any]:
        """Identity fields for result rows (names as in docs/ARCHITECTURE.md)."""
        return {
            "dtype": self.dtype,
            "bits": self.bits,
            "blocksize": self.blocksize,
            "centered": self.centered,
            "exponent_bits": self.resolved_exponent_bits,
            "scale_bits": self.scale_bits,
            "outlier_frac": self.outlier_frac,
        }
