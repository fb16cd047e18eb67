"""The GGUF per-tensor types kscale implements: llama.cpp's names, ggml's type ids and block sizes.

A plain table (no kernels imported), so the ledger and the format objects can price a tensor
without loading any quantization code. ``ggml_type`` is ggml's ``enum ggml_type`` value (also
``gguf.GGMLQuantizationType``); ``block_values``/``block_bytes`` are ggml's ``blck_size`` and
``type_size`` (``gguf.GGML_QUANT_SIZES``), so a row of n values stores
``n // block_values * block_bytes`` bytes. ``takes_imatrix``: ggml's quantizer for the type reads an
importance matrix (q8_0's ignores it).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGUFType:
    """One ggml block type."""

    name: str
    ggml_type: int
    block_values: int
    block_bytes: int
    takes_imatrix: bool

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower():
            raise ValueError(f"GGUF type names are llama.cpp's lower-case names; got {self.name!r}")
        if self.block_values <= 0 or self.block_bytes <= 0 or self.ggml_type < 0:
            raise ValueError(f"GGUF type {self.name!r}: block sizes and the ggml type id must be positive")

    @property
    def bits_per_weight(self) -> float:
        """Exact stored bits per value, block constants included (e.g. q4_k 4.5, q6_k 6.5625)."""
        return 8 * self.block_bytes / self.block_values

    def row_bytes(self, n_per_row: int) -> int:
        """Bytes of one quantized row; ValueError when the row does not split into whole blocks."""
        if n_per_row <= 0 or n_per_row % self.block_values:
            raise ValueError(
                f"{self.name} quantizes rows in blocks of {self.block_values} values; a row of {n_per_row} "
                f"is not a positive multiple of {self.block_values} (llama.cpp falls back to another type)"
            )
        return n_per_row // self.block_values * self.block_bytes


GGUF_TYPES: dict[str, GGUFType] = {t.name: t for t in (
    GGUFType("q4_0", 2, 32, 18, True),
    GGUFType("q4_1", 3, 32, 20, True),
    GGUFType("q5_0", 6, 32, 22, True),
    GGUFType("q5_1", 7, 32, 24, True),
    GGUFType("q8_0", 8, 32, 34, False),
    GGUFType("q2_k", 10, 256, 84, True),
    GGUFType("q3_k", 11, 256, 110, True),
    GGUFType("q4_k", 12, 256, 144, True),
    GGUFType("q5_k", 13, 256, 176, True),
    GGUFType("q6_k", 14, 256, 210, True),
    GGUFType("iq4_nl", 20, 32, 18, True),
    GGUFType("iq4_xs", 23, 256, 136, True),
)}
