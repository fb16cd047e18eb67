"""``BitLedger``: every stored bit of a quantized model, counted exactly.

The x axis of a k-bit scaling law is *total model bits* (Dettmers & Zettlemoyer 2022, §2.1
and §5.2), so the count must be exact and say what it includes. See :class:`BitLedger`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kscale.quant.filter import ModuleFilter
from kscale.quant.formats import format_of
from kscale.quant.formats.base import F16
from kscale.quant.modules import quantizable_modules, weight_matrix
from kscale.quant.spec import QuantSpec

__all__ = ["BitLedger", "LedgerRow", "ledger_for", "recipe_ledger", "tensor_row"]


@dataclass(frozen=True)
class LedgerRow:
    """Cost of one quantized weight matrix: ``numel`` weights (kept columns included);
    ``stored_type``: what it is stored as when the format decides per tensor (a recipe's GGUF
    type, a GGUF type's fallback, ``f16`` for rows a block format cannot block; None otherwise)."""

    name: str
    numel: int
    payload_bits: int
    constant_bits: int
    other_bits: int
    stored_type: str | None = None

    @property
    def total_bits(self) -> int:
        return self.payload_bits + self.constant_bits + self.other_bits


@dataclass(frozen=True)
class BitLedger:
    """Exact bit count of a model under a :class:`QuantSpec`.

    What is counted, and why:

    - One row per quantized weight matrix (``nn.Linear``/``Conv1D`` selected by the module
      filter): ``payload_bits`` = k bits per quantized weight (the paper's k; kscale stores 4-bit
      codes as packed nibbles); ``constant_bits`` = every stored block constant at
      ``scale_bits`` (two per block when ``centered``: scale and offset) plus, for data-dependent
      codebooks (``quantile``), 2^k entries x 16 bits per tensor; ``other_bits`` = input columns
      kept in 16 bit (proxy quantization, §3) at 16 bits each. For the 16-bit baseline a row is
      16 bits per weight and nothing else.
    - ``n_params``: every parameter of the model, tied weights (e.g. GPT-2's ``wte``/``lm_head``)
      counted once; buffers are not parameters and are not counted.
    - ``n_quantized``: the weights in the rows (matrix sizes, kept columns included).
    - ``total_bits``: the rows' bits + every other parameter (biases, norms, embeddings, the LM
      head by default) at ``unquantized_param_bits`` each -- 16 by default, the 16-bit model the
      paper compares against; with ``None``, each tensor's actual storage bits.
    - ``bits_per_param``: (row bits) / ``n_quantized`` -- the cost per quantized weight including
      its share of constants and kept columns: 4 + 16/64 = 4.25 for bits=4, blocksize=64,
      scale_bits=16 (§5.2); 4.5 with scale_bits=32. NaN when nothing is quantized.
    - A per-tensor recipe (llama.cpp file types, ``ftype_*``): the rows are every tensor the
      recipe stores -- token embedding and output head included, a tied pair once -- each at
      its own type's exact ggml size; ``scope`` (row column ``quant_scope``) says so.
    - ``stored_types`` counts the weights stored in each type wherever the format decides that
      per tensor (recipes; GGUF and MX types, whose matrices with rows that are not whole blocks
      fall back, to F16 at the last: ``f16`` counts those, at 16 bits each).
    """

    rows: tuple[LedgerRow, ...]
    n_params: int
    unquantized_bits: int
    scope: str | None = None

    @property
    def n_quantized(self) -> int:
        return sum(r.numel for r in self.rows)

    @property
    def payload_bits(self) -> int:
        return sum(r.payload_bits for r in self.rows)

    @property
    def constant_bits(self) -> int:
        return sum(r.constant_bits for r in self.rows)

    @property
    def other_bits(self) -> int:
        return sum(r.other_bits for r in self.rows)

    @property
    def total_bits(self) -> int:
        return self.payload_bits + self.constant_bits + self.other_bits + self.unquantized_bits

    @property
    def bits_per_param(self) -> float:
        n = self.n_quantized
        if n == 0:
            return math.nan
        return (self.payload_bits + self.constant_bits + self.other_bits) / n

    @property
    def type_census(self) -> dict[str, int]:
        """Weights stored in each per-tensor type (empty unless the format decides per tensor)."""
        census: dict[str, int] = {}
        for r in self.rows:
            if r.stored_type is not None:
                census[r.stored_type] = census.get(r.stored_type, 0) + r.numel
        return dict(sorted(census.items()))

    def to_row(self) -> dict[str, Any]:
        """Measurement columns for result rows (``quant_scope`` for recipes and F16 fallbacks,
        ``stored_types`` where the format decides per tensor)."""
        row = {
            "n_params": self.n_params,
            "n_quantized": self.n_quantized,
            "total_bits": self.total_bits,
            "bits_per_param": self.bits_per_param,
            "payload_bits": self.payload_bits,
            "constant_bits": self.constant_bits,
            "other_bits": self.other_bits,
        }
        if self.scope is not None:
            row["quant_scope"] = self.scope
        census = self.type_census
        if census:
            row["stored_types"] = json.dumps(census, separators=(",", ":"))
        return row


def tensor_row(name: str, shape: tuple[int, ...], spec: Any, n_kept_columns: int = 0) -> LedgerRow:
    """Ledger row of one [out, in] matrix stored in ``spec``'s format (a format config, e.g. a
    :class:`QuantSpec`); the format computes the exact cost (``kscale.quant.formats``).
    ``n_kept_columns`` input columns stay in 16 bit and are left out of the block layout."""
    fmt = format_of(spec)
    cost = fmt.tensor_cost(tuple(shape), spec, n_kept_columns)
    numel = int(shape[0]) * int(shape[1])
    kind = None if getattr(spec, "is_baseline", False) else fmt.stored_type(tuple(shape), spec)
    return LedgerRow(name, numel, cost.payload_bits, cost.constant_bits, cost.other_bits, kind)


def _check_keep_columns(
    modules: Mapping[str, nn.Module], keep_columns: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    if not keep_columns:
        return {}
    out = {}
    for name, mask in keep_columns.items():
        if name not in modules:
            raise ValueError(
                f"keep_columns names a module that is not quantized: {name!r}. "
                f"Quantized modules: {', '.join(modules) or '(none)'}"
            )
        in_f = weight_matrix(modules[name]).shape[1]
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (in_f,):
            got = (mask.dtype, tuple(mask.shape)) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(
                f"keep_columns[{name!r}] must be a bool tensor of shape ({in_f},) over input "
                f"columns; got {got}"
            )
        out[name] = mask
    return out


def _param_bits(p: torch.Tensor, unquantized_param_bits: int | None) -> int:
    per = p.element_size() * 8 if unquantized_param_bits is None else unquantized_param_bits
    return p.numel() * per


def build_ledger(
    model: nn.Module,
    rows: list[LedgerRow],
    quantized: list[torch.Tensor],
    unquantized_param_bits: int | None = 16,
    scope: str | None = None,
) -> BitLedger:
    """Assemble a ledger from rows of the quantized tensors (identified by object)."""
    q_ids = {id(t) for t in quantized}
    n_params = 0
    other = 0
    for p in model.parameters():  # deduplicates tied parameters
        n_params += p.numel()
        if id(p) not in q_ids:
            other += _param_bits(p, unquantized_param_bits)
    return BitLedger(tuple(rows), n_params, other, scope)


def ledger_for(
    model: nn.Module,
    spec: QuantSpec | Any,
    module_filter: ModuleFilter | None = None,
    *,
    keep_columns: Mapping[str, torch.Tensor] | None = None,
    unquantized_param_bits: int | None = 16,
) -> BitLedger:
    """The ledger :func:`kscale.quant.quantize_model` would return, without touching weights.
    A per-tensor recipe decides its tensors itself (``module_filter`` does not apply)."""
    fmt = format_of(spec)
    if fmt.per_tensor_recipe and not spec.is_baseline:
        if keep_columns:
            raise ValueError(f"format {fmt.name} keeps no 16-bit columns (outlier_frac is a blockwise option)")
        return recipe_ledger(model, spec, unquantized_param_bits)
    modules = quantizable_modules(model, module_filter)
    keep = _check_keep_columns(modules, keep_columns)
    rows, tensors, seen = [], [], set()
    for name, module in modules.items():
        if id(module.weight) in seen:  # a weight shared by two selected modules: count once
            continue
        seen.add(id(module.weight))
        n_kept = int(keep[name].sum()) if name in keep else 0
        rows.append(tensor_row(name, tuple(weight_matrix(module).shape), spec, n_kept))
        tensors.append(module.weight)
    return build_ledger(model, rows, tensors, unquantized_param_bits,
                        scope=_fallback_scope(rows, fmt, module_filter))


def _fallback_scope(rows: list[LedgerRow], fmt: Any, module_filter: ModuleFilter | None) -> str | None:
    """``quant_scope`` of a ledger some of whose matrices fell back to F16 (None when none did:
    the sweep's scope column then stands): the filter's scope plus what was stored in F16."""
    n_f16 = sum(1 for r in rows if r.stored_type == F16)
    if not n_f16:
        return None
    mf = ModuleFilter() if module_filter is None else module_filter
    return (f"nn.Linear+Conv1D include={','.join(mf.include)} exclude={','.join(mf.exclude)}; other "
            f"params counted at 16 bit; {n_f16} of {len(rows)} matrices stored in F16 (rows not whole "
            f"{fmt.name} blocks: unquantized, 16 bits per weight; see stored_types)")


def recipe_ledger(model: nn.Module, spec: Any, unquantized_param_bits: int | None = 16) -> BitLedger:
    """Ledger of a per-tensor-recipe format: one row per tensor the recipe stores, at its type."""
    fmt = format_of(spec)
    rows, tensors = [], []
    for target in fmt.targets(model, spec):
        row = tensor_row(target.name, tuple(weight_matrix(target.module).shape), target.config)
        rows.append(LedgerRow(row.name, row.numel, row.payload_bits, row.constant_bits, row.other_bits,
                              target.stored_type))
        tensors.append(target.module.weight)
    return build_ledger(model, rows, tensors, unquantized_param_bits, scope=fmt.quant_scope)
