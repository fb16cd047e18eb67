"""What an activation or KV-cache quantizer is: bits, granularity, data type; and how it rounds.

Why a separate spec from :class:`kscale.quant.QuantSpec`: weights are quantized once and stored,
activations and keys/values are quantized on the fly in every forward pass, token by token. A
constant shared by two tokens would let a later token change how an earlier one is rounded (a
causal model would see the future), so every group here lies inside one token: the whole
vector (``token``), one attention head (``head``, K/V only) or blocks of ``B`` values along it
(``block<B>``; a ragged last block gets its own constant). Each group is then rounded by
kscale's registered ``blockwise`` format with one absmax constant per group
(``QuantSpec(bits, dtype, blocksize=None)`` on the [groups, group_size] matrix), so the
codebooks are exactly the weights' (int: symmetric levels, float: e/m split, nf ...).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from kscale.quant.dtypes import DTYPES
from kscale.quant.formats import fake_quantize
from kscale.quant.spec import BASELINE_BITS, QuantSpec

__all__ = ["RuntimeQuantSpec", "OFF_BITS", "parse_granularity"]

OFF_BITS = BASELINE_BITS
_BLOCK = re.compile(r"^block(\d+)$")


def parse_granularity(granularity: str, allowed: tuple[str, ...]) -> int | None:
    """``token``/``head`` -> None; ``block<B>`` -> B (B >= 2). Raises ValueError otherwise."""
    if isinstance(granularity, str) and granularity in allowed:
        return None
    match = _BLOCK.match(granularity) if isinstance(granularity, str) else None
    if match and int(match.group(1)) >= 2:
        return int(match.group(1))
    raise ValueError(f"granularity must be one of {', '.join(allowed)} or block<B> with B >= 2 "
                     f"values per constant (e.g. block32); got {granularity!r}")


@dataclass(frozen=True)
class RuntimeQuantSpec:
    """Fake quantization of a tensor produced at run time (activations, keys, values).

    Args:
        bits: 2..8; 16 = off (the tensor passes unchanged).
        granularity: ``token`` (one constant per token vector), ``head`` (one per attention head
            of a token; keys/values only) or ``block<B>`` (B consecutive values of a token).
        dtype: a data-independent :data:`kscale.quant.DTYPES` type (int = symmetric integer).
            ``quantile`` is rejected: its codebook is estimated from the whole tensor, which
            would mix tokens.
        scale_bits: precision of each group's constant (16: fp16, as a KV cache stores it).
        kind: ``act`` or ``kv`` (which granularities are allowed; names the error).
    """

    bits: int = OFF_BITS
    granularity: str = "token"
    dtype: str = "int"
    scale_bits: int = 16
    kind: str = "act"

    def __post_init__(self) -> None:
        if self.kind not in ("act", "kv"):
            raise ValueError(f"kind must be 'act' or 'kv'; got {self.kind!r}")
        name = f"{self.kind}_bits"
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or \
                not (2 <= self.bits <= 8 or self.bits == OFF_BITS):
            raise ValueError(f"{name} must be an integer in 2..8, or 16 = not quantized; got {self.bits!r}")
        allowed = ("token", "head") if self.kind == "kv" else ("token",)
        try:
            parse_granularity(self.granularity, allowed)
        except ValueError as err:
            raise ValueError(f"{self.kind}_granularity: {err}") from None
        if DTYPES.get(self.dtype).data_dependent:  # unknown names raise with did-you-mean
            raise ValueError(f"{self.kind}_dtype {self.dtype!r} estimates its codebook from the whole "
                             "tensor, which mixes tokens; use a fixed type (int, float, nf, dynamic)")
        QuantSpec(bits=4, dtype=self.dtype, scale_bits=self.scale_bits)  # validates scale_bits

    @property
    def is_off(self) -> bool:
        return self.bits == OFF_BITS

    @property
    def blocksize(self) -> int | None:
        """Values per constant for ``block<B>``, else None."""
        return parse_granularity(self.granularity, ("token", "head"))

    @property
    def group_spec(self) -> QuantSpec:
        """The blockwise format config each group is rounded with (one absmax per row)."""
        return QuantSpec(bits=self.bits, dtype=self.dtype, blocksize=None, scale_bits=self.scale_bits)

    def label(self) -> str:
        return "16" if self.is_off else f"{self.dtype}{self.bits}-{self.granularity}"

    def to_row(self) -> dict[str, Any]:
        """``<kind>_bits`` always; granularity and dtype only when quantizing (None when off)."""
        k = self.kind
        if self.is_off:
            return {f"{k}_bits": OFF_BITS, f"{k}_granularity": None, f"{k}_dtype": None}
        return {f"{k}_bits": self.bits, f"{k}_granularity": self.granularity, f"{k}_dtype": self.dtype}

    # ------------------------------------------------------------------ rounding

    def groups_per_token(self, n_heads: int, head_dim: int) -> int:
        """Constants per token vector of ``n_heads x head_dim`` values (activations: n_heads=1)."""
        if self.granularity == "token":
            return 1
        if self.granularity == "head":
            return n_heads
        return math.ceil(n_heads * head_dim / self.blocksize)

    def bits_per_token(self, n_heads: int, head_dim: int) -> int:
        """Exact storage of one token vector: payload + one constant per group (16 bit when off)."""
        numel = n_heads * head_dim
        if self.is_off:
            return numel * OFF_BITS
        return numel * self.bits + self.groups_per_token(n_heads, head_dim) * self.scale_bits

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` of shape [..., n_heads, head_dim] (activations: [..., 1, D]).

        Returns a new tensor of x's shape and dtype. With gradients on (quantized training),
        the backward pass is straight-through: d out / d x = identity.
        """
        if self.is_off:
            return x
        *lead, n_heads, head_dim = x.shape
        if self.granularity == "head":
            rows = x.reshape(-1, head_dim)
        else:
            rows = x.reshape(-1, n_heads * head_dim)
            b = self.blocksize
            if b is not None:
                pad = -rows.shape[1] % b  # repeat each token's last value: its block's absmax stays
                if pad:
                    rows = torch.cat([rows, rows[:, -1:].expand(-1, pad)], dim=1)
                rows = rows.reshape(-1, b)
        q = fake_quantize(rows.detach(), self.group_spec)
        if self.blocksize is not None:
            q = q.reshape(-1, n_heads * head_dim + (-n_heads * head_dim % self.blocksize))
            q = q[:, : n_heads * head_dim]
        q = q.reshape(x.shape)
        return x + (q - x).detach() if x.requires_grad else q
