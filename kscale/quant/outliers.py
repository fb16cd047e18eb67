"""Proxy quantization: keep the outlier-prone hidden dimensions in 16 bit (Dettmers & Zettlemoyer 2022, §3, App. D).

Outlier features (large-magnitude hidden dimensions) hurt low-bit quantization, but finding
them needs inputs. The paper's *proxy*: hidden units whose producing weights have a large
standard deviation are the ones that produce outliers (Spearman 0.55-0.78 with the outlier
magnitude, Table 2). So, without any data:

1. for a *producer* linear ``W_p`` ``[out, in]``, compute the std of each output unit's weights
   (row ``j`` of ``W_p``);
2. the top ``outlier_frac`` units (p = 2 % in the paper) form the set J;
3. the *consumer* layer that reads those units keeps its input columns J in 16 bit
   (bit-identical); everything else is quantized with the spec.

Which layer consumes a producer's units is family knowledge, declared as
``ModelFamily.outlier_pairs`` = ``((producer glob, consumer glob), ...)``; the i-th ``*`` of
the consumer glob is filled with what the i-th ``*`` of the producer glob matched (so
``layers.*.fc1`` -> ``layers.*.fc2`` pairs the two linears of the same block).

The cost is ``p · (16 − k)`` extra bits per parameter of the consumer (§5.2), counted by the
ledger from the masks returned here.
"""
from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from kscale.quant.filter import ModuleFilter
from kscale.quant.modules import quantizable_modules, weight_matrix
from kscale.quant.spec import QuantSpec

log = logging.getLogger(__name__)

#: every Linear/Conv1D, the LM head included (producers need not be quantized themselves)
_EVERY = ModuleFilter(include=("*",), exclude=())

__all__ = ["n_outliers", "outlier_units", "consumer_name", "outlier_keep_columns", "keep_columns_for"]


def n_outliers(n_units: int, frac: float) -> int:
    """How many of ``n_units`` are kept: ``round(frac · n)`` (half up), at least 1 when
    ``frac > 0`` (a positive fraction must keep something), at most ``n``."""
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"outlier fraction must be in [0, 1); got {frac!r}")
    if frac == 0.0:
        return 0
    return min(n_units, max(1, int(frac * n_units + 0.5)))


def outlier_units(W: Tensor, frac: float) -> Tensor:
    """Bool mask ``[out]`` of the output units of ``W`` ``[out, in]`` with the largest weight
    std (population std over the unit's ``in`` weights); ties broken by lower index."""
    if W.ndim != 2:
        raise ValueError(f"outlier_units needs a [out, in] matrix; got shape {tuple(W.shape)}")
    k = n_outliers(W.shape[0], frac)
    std = W.detach().double().std(dim=1, unbiased=False)  # [out]
    top = torch.argsort(-std, stable=True)[:k]
    mask = torch.zeros(W.shape[0], dtype=torch.bool, device=W.device)
    mask[top] = True
    return mask


def _glob_regex(glob: str) -> re.Pattern[str]:
    """``fnmatch`` glob -> regex with one capture group per ``*``."""
    parts = [fnmatch.translate(p)[4:-3] if p else "" for p in glob.split("*")]  # strip (?s:...)\Z
    return re.compile("^" + "(.*?)".join(parts) + "$")


def consumer_name(producer: str, producer_glob: str, consumer_glob: str) -> str | None:
    """The consumer module name that pairs with ``producer`` (None if it does not match).

    >>> consumer_name("model.decoder.layers.3.fc1", "model.decoder.layers.*.fc1", "model.decoder.layers.*.fc2")
    'model.decoder.layers.3.fc2'
    """
    n_p, n_c = producer_glob.count("*"), consumer_glob.count("*")
    if n_p != n_c:
        raise ValueError(
            f"outlier pair ({producer_glob!r}, {consumer_glob!r}): the consumer glob must have as "
            f"many '*' as the producer glob (each is filled with what the producer's matched); "
            f"got {n_p} and {n_c}"
        )
    match = _glob_regex(producer_glob).match(producer)
    if match is None:
        return None
    pieces = consumer_glob.split("*")
    out = pieces[0]
    for captured, piece in zip(match.groups(), pieces[1:]):
        out += captured + piece
    return out


def outlier_keep_columns(
    model: nn.Module,
    pairs: Iterable[tuple[str, str]],
    frac: float,
    *,
    module_filter: ModuleFilter | None = None,
) -> dict[str, Tensor]:
    """``consumer name -> bool mask [consumer in_features]`` of input columns kept in 16 bit.

    For every module matching a producer glob, its top-``frac`` units by weight std mark the
    consumer's input columns (several producers feeding one consumer: union). Only consumers
    that are quantized (selected by ``module_filter``; ``None`` = the default
    :class:`ModuleFilter`, as in ``quantize_model``) get a mask. Raises ``ValueError`` if a
    consumer is missing or its input width differs from the producer's output width, since
    then the family's pairs do not describe this model.
    """
    pairs = tuple(tuple(p) for p in pairs)
    if frac == 0.0 or not pairs:
        return {}
    candidates = quantizable_modules(model, module_filter)  # None: the default filter, as quantize_model
    linears = quantizable_modules(model, _EVERY)  # producers need not be quantized themselves
    keep: dict[str, Tensor] = {}
    for producer_glob, consumer_glob in pairs:
        matched = False
        for name, module in linears.items():
            consumer = consumer_name(name, producer_glob, consumer_glob)
            if consumer is None:
                continue
            matched = True
            if consumer not in linears:
                raise ValueError(
                    f"outlier pair ({producer_glob!r}, {consumer_glob!r}): producer {name!r} has no "
                    f"consumer {consumer!r} among the model's linear layers"
                )
            if consumer not in candidates:
                continue
            W_p = weight_matrix(module)  # [out_p, in_p]
            width = weight_matrix(linears[consumer]).shape[1]
            if W_p.shape[0] != width:
                raise ValueError(
                    f"outlier pair {name!r} -> {consumer!r}: the producer has {W_p.shape[0]} output "
                    f"units but the consumer reads {width} inputs"
                )
            mask = outlier_units(W_p, frac)
            keep[consumer] = keep[consumer] | mask if consumer in keep else mask
        if not matched:
            log.warning("outlier pair (%s, %s) matched no module of the model", producer_glob, consumer_glob)
    return keep


def keep_columns_for(
    model: nn.Module,
    spec: QuantSpec,
    *,
    outlier_pairs: Iterable[tuple[str, str]] | None,
    module_filter: ModuleFilter | None = None,
) -> dict[str, Tensor] | None:
    """The ``keep_columns`` argument for ``quantize_model``/GPTQ from a spec: None when
    ``spec.outlier_frac == 0``; a ``ValueError`` if outliers are asked for without pairs."""
    frac = getattr(spec, "outlier_frac", 0.0)  # a format without the axis keeps no columns
    if frac == 0.0 or spec.is_baseline:
        return None
    pairs = tuple(outlier_pairs or ())
    if not pairs:
        raise ValueError(
            f"outlier_frac={frac} needs the family's outlier_pairs (producer -> consumer globs) "
            "to know which input columns to keep; pass options={'outlier_pairs': family.outlier_pairs}"
        )
    return outlier_keep_columns(model, pairs, frac, module_filter=module_filter)


def keep_fraction(keep: Mapping[str, Tensor]) -> float:
    """Fraction of kept columns over all masked consumers (for logs)."""
    total = sum(m.numel() for m in keep.values())
    return sum(int(m.sum()) for m in keep.values()) / total if total else 0.0
