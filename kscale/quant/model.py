"""Round-to-nearest quantization of a whole model in place, and bitwise snapshot/restore.

"Load once, quantize many": a sweep runs dozens of cells on one loaded model. Each cell takes a
:class:`WeightSnapshot` (a copy of only the tensors that get quantized), quantizes in place,
evaluates, and restores the original weights bit for bit. "In place" is literal: the quantized
values are written into each weight's own storage (:func:`kscale.quant.fake_quantize_`), so a
cell allocates no full-size tensors.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from kscale.quant.filter import ModuleFilter
from kscale.quant.formats import fake_quantize_, format_of
from kscale.quant.ledger import BitLedger, _check_keep_columns, ledger_for
from kscale.quant.modules import QUANTIZABLE_TYPES, quantizable_modules, weight_matrix
from kscale.quant.spec import QuantSpec

log = logging.getLogger(__name__)

__all__ = ["quantize_model", "quantize_matrix", "quantize_matrix_", "WeightSnapshot"]


def quantize_matrix(W: torch.Tensor, spec: QuantSpec, keep: torch.Tensor | None = None,
                    imatrix: torch.Tensor | None = None) -> torch.Tensor:
    """Fake-quantize an [out, in] matrix; input columns where ``keep`` is True stay bit-identical
    and are left out of the block layout (the [out, in - kept] sub-matrix is blocked).
    Returns a new tensor; :func:`quantize_matrix_` writes into ``W`` instead."""
    return quantize_matrix_(W.detach().clone(memory_format=torch.contiguous_format), spec, keep,
                            imatrix)


def quantize_matrix_(W: torch.Tensor, spec: QuantSpec, keep: torch.Tensor | None = None,
                     imatrix: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`quantize_matrix` written into ``W``'s storage (``W`` may be a view of a module's
    weight, e.g. ``Conv1D``'s transpose); returns ``W``. Kept columns are never written.
    ``spec`` is any format config (:mod:`kscale.quant.formats`); ``imatrix`` ([in]) is the
    importance matrix of a format that takes one."""
    if keep is None or not bool(keep.any()):
        return fake_quantize_(W, spec, imatrix=imatrix)
    keep = keep.to(W.device)
    drop = ~keep
    if bool(drop.any()):
        with torch.no_grad():
            W[:, drop] = fake_quantize_(W[:, drop].contiguous(), spec)  # the gather is a copy anyway
    return W


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    *,
    module_filter: ModuleFilter | None = None,
    keep_columns: Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
    unquantized_param_bits: int | None = 16,
    imatrices: Mapping[str, torch.Tensor] | None = None,
) -> BitLedger:
    """Round-to-nearest quantize every selected ``nn.Linear``/``Conv1D`` weight in place.

    Args:
        model: modified in place (take a :class:`WeightSnapshot` first to undo it).
        spec: the cell; ``bits=16`` leaves weights untouched and returns the 16-bit ledger.
        module_filter: which modules (default :class:`ModuleFilter`: all but the LM head).
        keep_columns: module name -> bool [in_features] mask of input columns kept in 16 bit
            (proxy quantization, issue 7); counted as ``other_bits``.
        progress: show a tqdm bar over modules.
        unquantized_param_bits: see :class:`BitLedger`.
        imatrices: module name -> [in_features] importance matrix, for a format configured to
            use one (GGUF types with ``imatrix=True``; see :func:`kscale.quant.imatrix.importance_matrices`).

    A per-tensor recipe (``format=ftype_q4_k_m``, ...) quantizes the tensors it chooses -- the
    token embedding and the head included -- each at its own type; ``module_filter`` does not
    apply (take the snapshot with ``recipes=True``).

    Returns:
        The :class:`BitLedger` of the quantized model.
    """
    modules = quantizable_modules(model, module_filter)
    keep = _check_keep_columns(modules, keep_columns)
    ledger = ledger_for(
        model, spec, module_filter, keep_columns=keep, unquantized_param_bits=unquantized_param_bits
    )
    if spec.is_baseline:
        return ledger
    if format_of(spec).per_tensor_recipe:
        return _quantize_recipe(model, spec, ledger, progress, imatrices or {})
    start = time.perf_counter()
    done: set[int] = set()
    for name, module in tqdm(modules.items(), desc=f"rtn {spec.label}", disable=not progress, leave=False):
        if id(module.weight) in done:
            continue
        done.add(id(module.weight))
        quantize_matrix_(weight_matrix(module), spec, keep.get(name),  # into the weight's storage
                         (imatrices or {}).get(name))
    log.debug(
        "quantized %d matrices spec=%s in %.1fs (bits_per_param=%.4f)",
        len(done), spec.label, time.perf_counter() - start, ledger.bits_per_param,
    )
    return ledger


def _quantize_recipe(model: nn.Module, spec, ledger: BitLedger, progress: bool,
                     imatrices: Mapping[str, torch.Tensor]) -> BitLedger:
    """Each tensor of a per-tensor recipe at its own type, in its own storage."""
    targets = format_of(spec).targets(model, spec)
    for target in tqdm(targets, desc=f"rtn {spec.label}", disable=not progress, leave=False):
        imatrix = imatrices.get(target.imatrix_from) if target.imatrix_from else None
        if target.config.imatrix and imatrix is None:
            raise ValueError(f"format {spec.label}: no importance matrix for {target.imatrix_from} "
                             f"(tensor {target.name}); compute them with imatrix_for(model, spec, ...)")
        fake_quantize_(weight_matrix(target.module), target.config, imatrix=imatrix)
    return ledger


def recipe_tensor_modules(model: nn.Module) -> list[nn.Module]:
    """Every module whose weight a per-tensor recipe may store: all linear layers (the head
    included) and embeddings, whatever the module filter."""
    return [m for m in model.modules() if isinstance(m, (*QUANTIZABLE_TYPES, nn.Embedding))]


class WeightSnapshot:
    """A copy of the weights that quantization will overwrite, restorable bit for bit.

    Keeps one copy of only the selected ``nn.Linear``/``Conv1D`` weights (not embeddings,
    biases or norms), optionally on another device (``device="cpu"`` to spare GPU memory).
    ``recipes=True`` also keeps the embeddings and the LM head, which the per-tensor recipes
    (``ftype_*`` formats) quantize.

    >>> with WeightSnapshot(model) as snap:          # doctest: +SKIP
    ...     ledger = quantize_model(model, spec)     # evaluate ...
    ... # weights restored here; or call snap.restore() between cells yourself
    """

    def __init__(
        self,
        model: nn.Module,
        module_filter: ModuleFilter | None = None,
        *,
        device: str | torch.device | None = None,
        recipes: bool = False,
    ) -> None:
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        seen: set[int] = set()
        modules = list(quantizable_modules(model, module_filter).values())
        if recipes:
            modules += recipe_tensor_modules(model)
        with torch.no_grad():
            for module in modules:
                p = module.weight
                if id(p) in seen:
                    continue
                seen.add(id(p))
                copy = p.detach().to(device=device or p.device, copy=True)
                self._saved.append((p, copy))

    @property
    def n_tensors(self) -> int:
        return len(self._saved)

    @property
    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for _, c in self._saved)

    def restore(self) -> None:
        """Copy the saved weights back (bitwise: same dtype, plain copy)."""
        with torch.no_grad():
            for p, copy in self._saved:
                p.copy_(copy)

    def __enter__(self) -> WeightSnapshot:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
