"""AWQ: activation-aware weight quantization (Lin et al. 2023), for every kscale data type.

AWQ's observation: the few input channels that carry large activations matter most for a
linear layer's output, and their weights can be protected without keeping them in 16 bit by
scaling them *up* before rounding and the activations *down* by the same factor:

    y = W x = (W · diag(s)) (diag(s)⁻¹ x)   ->   ŷ = Q(W · diag(s)) (diag(s)⁻¹ x)

Per input channel ``j``, ``s_j = mean|x_j|^α`` over the calibration activations ``x`` of the
layer (llm-awq ``get_act_scale`` and ``auto_scale``): clamped at ``1e-4``, normalised by
``sqrt(max(s) · min(s))`` so the scales centre on 1, and rounded to fp16 (the precision it is
stored at: the fake-quantized weights use exactly the stored vector). ``α`` is searched on
llm-awq's grid ``{0, 1/n, ..., (n−1)/n}`` (``n_grid = 20``: 0, 0.05, ..., 0.95) for the lowest
output error on the calibration inputs ``X`` ``[tokens, in]`` of the layer,

    err(α) = Σ_layers ‖X Wᵀ − X W_effᵀ‖² = Σ_layers Σ (ΔW G) ⊙ ΔW,  ΔW = W − W_eff,  G = Xᵀ X,

summed over the linears that share one input (q/k/v of an attention block, gate/up of a gated
MLP: found by tensor identity during the forward pass, so no family table is needed) — they
get one shared ``s``, as in llm-awq's ``linears2scale`` groups. (llm-awq measures the error at
the output of the enclosing module, e.g. the whole attention for q/k/v; the outputs of the
group's own linears need no knowledge of the family's modules.) The first minimum wins, so
``α = 0`` (``s ≡ 1``, round to nearest) is kept unless a scale is strictly better: AWQ's
calibration error is never above RTN's. The Gram matrix ``G`` makes the error exact over every
calibration token with memory ``in²`` per group (no token subsampling).

**Storage and the ledger.** A kernel stores ``Q(W · diag(s))`` (the k-bit codes and block
constants of the spec, blocked exactly as round to nearest blocks the [out, in] matrix) plus ``s``, and
scales the layer's input by ``1/s``. llm-awq folds ``1/s`` into the preceding LayerNorm or linear
instead; kscale does *not*, because a sweep restores a cell's weights with a
:class:`~kscale.quant.WeightSnapshot` that holds only the quantized weight matrices: touching a
LayerNorm would leak into the next cell. So the effective weight ``W_eff = Q(W·diag(s))·diag(s)⁻¹``
(the same linear map, up to floating-point rounding) is written back into each weight in place
(fake quantization), and the per-channel vector is charged to the ledger: one extra
:class:`~kscale.quant.LedgerRow` per input group (``numel = 0``: it is not a model parameter),
``in_features × 16`` bits in ``other_bits``, counted once for linears sharing it. It is counted
whatever ``α`` the search picks (a format stores the vector for every group), so the ledger
depends on shapes only; ``total_bits`` and ``bits_per_param`` include it.

**Proxy quantization** (``outlier_frac > 0``): kept input columns get ``s_j = 1`` (for every
linear of the group, if any of them keeps column ``j``), so ``W·diag(s)`` leaves them bit-identical
and round-to-nearest's ``keep`` rule keeps them exactly, as with ``rtn``; the scales are
normalised over the other channels.

**Calibration** is non-sequential, as llm-awq (whose search runs on the 16-bit model's
activations): every layer sees the inputs of the unquantized model. It still runs one decoder
block at a time (:mod:`kscale.quant.sequential`: capture the first block's inputs, replay each
block on them, keep its outputs for the next block, *then* quantize it), so only one block's
statistics live at a time. Not included: llm-awq's second step, the weight-clipping search
(``auto_clip``); rounding is kscale's round-to-nearest with the spec's block constants.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kscale.quant.calibration import CalibrationSet, window_tokens
from kscale.quant.filter import ModuleFilter
from kscale.quant.ledger import BitLedger, LedgerRow, ledger_for
from kscale.quant.methods import CalibratedConfig, QuantMethod, register_method
from kscale.quant.model import quantize_matrix
from kscale.quant.modules import set_weight_matrix, weight_matrix
from kscale.quant.outliers import keep_columns_for
from kscale.quant.sequential import (
    capture_block_inputs,
    find_decoder_blocks,
    input_device,
    on_device,
    run_block,
    unique_weight_modules,
)
from kscale.quant.spec import QuantSpec

log = logging.getLogger(__name__)

__all__ = [
    "AWQ", "AWQConfig", "AWQGroupResult", "InputStats", "SCALE_VECTOR_BITS", "awq_effective_weight",
    "awq_grid", "awq_ledger", "awq_quantize_model", "awq_scales", "awq_search", "output_error",
]

#: precision of the stored per-channel scale vector ``s`` (fp16)
SCALE_VECTOR_BITS = 16
#: llm-awq clamps ``mean|x|^α`` at this value before normalising
_MIN_SCALE = 1e-4
#: the fp16 range the stored ``s`` is kept in (smallest normal, largest finite): 1/s stays finite
_FP16_TINY, _FP16_MAX = 2.0**-14, 65504.0


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class AWQConfig(CalibratedConfig):
    """AWQ's options besides the spec; recorded in rows via :meth:`to_row`.

    Attributes:
        calibration: which calibration windows (``dataset``, ``split``, ``nsamples``, ``seqlen``;
            the seed is the sweep's ``seed`` axis). AWQ's paper uses 128 samples of 512 tokens.
        n_grid: number of ``α`` values searched, ``α = i / n_grid`` for ``i < n_grid``
            (llm-awq: 20). ``n_grid = 1`` searches only ``α = 0``: round to nearest.
        group_shared_inputs: one shared ``s`` for linears that read the same input tensor
            (llm-awq's q/k/v and gate/up groups); False gives every linear its own ``s``
            (and its own 16-bit vector in the ledger).
        device: where each decoder block is moved while it is calibrated and quantized
            (``None``: where the model is).
    """

    n_grid: int = 20
    group_shared_inputs: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n_grid, bool) or not isinstance(self.n_grid, int) or self.n_grid < 1:
            raise ValueError(
                f"awq n_grid must be an integer >= 1 (alpha = i / n_grid, i < n_grid); got {self.n_grid!r}"
            )
        if not isinstance(self.group_shared_inputs, bool):
            raise ValueError(f"awq group_shared_inputs must be True or False; got {self.group_shared_inputs!r}")
        if self.device is not None and not isinstance(self.device, str):
            raise ValueError(f"awq device must be a device name (e.g. 'cuda') or None; got {self.device!r}")

    def to_row(self) -> dict[str, Any]:
        """Identity fields for result rows (``calib_*`` and ``awq_*``)."""
        return {
            **self.calibration.to_row(),
            "awq_n_grid": self.n_grid,
            "awq_group_shared_inputs": self.group_shared_inputs,
            "awq_scale_bits": SCALE_VECTOR_BITS,
        }


# ----------------------------------------------------------------------------- one group of linears


def awq_grid(n_grid: int) -> list[float]:
    """The searched exponents ``α = i / n_grid``, ``i = 0 .. n_grid − 1`` (llm-awq's grid)."""
    return [i / n_grid for i in range(n_grid)]


def awq_scales(mean_abs: Tensor, alpha: float, keep: Tensor | None = None) -> Tensor:
    """The per-input-channel scale ``s`` ``[in]`` (float32 holding fp16 values) for one ``α``.

    ``mean|x|^α`` clamped at 1e-4, divided by ``sqrt(max · min)`` (llm-awq), rounded to fp16 and
    kept in the normal fp16 range. ``keep`` (bool ``[in]``) marks columns kept in 16 bit: they get
    ``s = 1`` and are left out of the normalisation. ``α = 0`` gives exactly ``s ≡ 1``.
    """
    s = mean_abs.detach().float().pow(alpha).clamp(min=_MIN_SCALE)
    free = None if keep is None else ~keep.to(s.device)
    ref = s if free is None or not bool(free.any()) else s[free]
    s = s / (ref.max() * ref.min()).sqrt()
    s = s.clamp(_FP16_TINY, _FP16_MAX).to(torch.float16).float()
    if free is not None:
        s = torch.where(free, s, torch.ones_like(s))
    return s


def awq_effective_weight(W: Tensor, s: Tensor, spec: QuantSpec, keep: Tensor | None = None) -> Tensor:
    """``Q(W · diag(s)) · diag(s)⁻¹`` in ``W``'s dtype; ``W`` is ``[out, in]``.

    Computed in float32 (float64 for float64 weights); ``Q`` is kscale's round-to-nearest of the
    ``[out, in]`` matrix (:func:`kscale.quant.quantize_matrix`), with input columns where
    ``keep`` is True kept bit-identical (they must have ``s = 1``). With ``s ≡ 1`` this is
    exactly round to nearest.
    """
    work = torch.float64 if W.dtype == torch.float64 else torch.float32
    s = s.to(device=W.device, dtype=work)
    Ws = W.detach().to(work) * s
    return (quantize_matrix(Ws, spec, keep) / s).to(W.dtype)


def output_error(dW: Tensor, G: Tensor) -> float:
    """``‖X ΔWᵀ‖²`` from the Gram matrix ``G = Xᵀ X`` ``[in, in]``: ``Σ (ΔW G) ⊙ ΔW``."""
    dW = dW.to(G.dtype)
    return float(((dW @ G) * dW).sum())


class InputStats:
    """Running statistics of a layer's inputs ``[..., in]``: ``Σ |x|`` per channel (for ``s``)
    and ``Xᵀ X`` (for the output error), in float32 (float64 for float64 layers)."""

    def __init__(self, cols: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.cols = cols
        self.abs_sum = torch.zeros(cols, device=device, dtype=dtype)
        self.gram = torch.zeros(cols, cols, device=device, dtype=dtype)
        self.n = 0

    def add(self, x: Tensor) -> None:
        if x.shape[-1] != self.cols:
            raise ValueError(f"layer input has {x.shape[-1]} features, expected {self.cols}")
        X = x.detach().reshape(-1, self.cols).to(device=self.gram.device, dtype=self.gram.dtype)
        self.abs_sum += X.abs().sum(dim=0)
        self.gram.addmm_(X.T, X)
        self.n += X.shape[0]

    @classmethod
    def of(cls, X: Tensor) -> InputStats:
        """Statistics of one input matrix ``X`` ``[tokens, in]``."""
        stats = cls(X.shape[-1], device=X.device, dtype=torch.float64 if X.dtype == torch.float64 else torch.float32)
        stats.add(X)
        return stats

    @classmethod
    def for_module(cls, module: nn.Module) -> InputStats:
        """Empty statistics for the inputs of a Linear/Conv1D, on its weight's device."""
        W = weight_matrix(module)
        return cls(W.shape[1], device=W.device, dtype=torch.float64 if W.dtype == torch.float64 else torch.float32)

    def mean_abs(self) -> Tensor:
        """``mean |x_j|`` per input channel ``[in]`` (llm-awq's ``get_act_scale``)."""
        return self.abs_sum / max(self.n, 1)


@dataclass(frozen=True)
class AWQGroupResult:
    """Outcome of the ``α`` search for linears sharing one input.

    Attributes:
        names: the linears (module names, forward order) that share ``scales``.
        alpha: the chosen exponent.
        scales: the stored vector ``s`` ``[in]`` (float32 holding fp16 values).
        error: the output error ``Σ ‖X Wᵀ − X W_effᵀ‖²`` at ``alpha`` on the calibration inputs.
        errors: the error at every grid point (``errors[0]`` is round to nearest, ``α = 0``).
        weights: the effective weights ``[out, in]`` (in each weight's dtype), one per name.
    """

    names: tuple[str, ...]
    alpha: float
    scales: Tensor
    error: float
    errors: tuple[float, ...]
    weights: tuple[Tensor, ...]

    @property
    def rtn_error(self) -> float:
        return self.errors[0]

    @property
    def in_features(self) -> int:
        return int(self.scales.numel())


def awq_search(
    weights: Sequence[Tensor],
    stats: InputStats,
    spec: QuantSpec,
    *,
    n_grid: int = 20,
    keeps: Sequence[Tensor | None] | None = None,
    names: Sequence[str] | None = None,
) -> AWQGroupResult:
    """Search ``α`` for the linears ``weights`` (``[out_i, in]`` each) that share the inputs
    summarised by ``stats``; ``keeps[i]`` masks input columns of linear ``i`` kept in 16 bit."""
    if not weights:
        raise ValueError("awq_search needs at least one weight matrix")
    keeps = list(keeps) if keeps is not None else [None] * len(weights)
    if len(keeps) != len(weights):
        raise ValueError(f"got {len(weights)} weight matrices but {len(keeps)} keep masks")
    for W in weights:
        if W.ndim != 2 or W.shape[1] != stats.cols:
            raise ValueError(f"weights must be [out, {stats.cols}] matrices; got {tuple(W.shape)}")
    union = None
    for keep in keeps:
        if keep is not None:
            union = keep.clone() if union is None else union | keep
    mean_abs, G = stats.mean_abs(), stats.gram
    best: tuple[float, float, Tensor, tuple[Tensor, ...]] | None = None
    errors = []
    for alpha in awq_grid(n_grid):
        s = awq_scales(mean_abs, alpha, union)
        eff = tuple(awq_effective_weight(W, s, spec, keep) for W, keep in zip(weights, keeps))
        err = sum(output_error(W.to(G) - E.to(G), G) for W, E in zip(weights, eff))  # in G's precision
        errors.append(err)
        if best is None or err < best[0]:  # the first minimum: ties keep the smaller alpha
            best = (err, alpha, s, eff)
    assert best is not None
    err, alpha, s, eff = best
    return AWQGroupResult(
        names=tuple(names) if names is not None else tuple(str(i) for i in range(len(weights))),
        alpha=alpha, scales=s, error=err, errors=tuple(errors), weights=eff,
    )


# ----------------------------------------------------------------------------- model level


class _InputCollector:
    """Forward hooks that group linears by shared input and accumulate one :class:`InputStats`
    per group while a forward pass runs.

    A linear joins a group when, on its first call, its input is the *same tensor object* as
    the first input of an earlier linear (q/k/v read one LayerNorm output); references to those
    first inputs are held during the run, so an identity match cannot come from a freed tensor.
    """

    def __init__(self, modules: Mapping[str, nn.Module], *, group: bool) -> None:
        self.modules = dict(modules)
        self.group = group
        self.leader_of: dict[str, str] = {}
        self.members: dict[str, list[str]] = {}
        self.stats: dict[str, InputStats] = {}
        self._first: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0]
            if name not in self.leader_of:
                leader = next((n for n, ref in self._first.items() if ref is x), None) if self.group else None
                if leader is None:
                    self.stats[name] = InputStats.for_module(module)
                    self.members[name] = []
                    self._first[name] = x
                    leader = name
                self.leader_of[name] = leader
                self.members[leader].append(name)
            if self.leader_of[name] == name:
                self.stats[name].add(x)

        return hook

    def __enter__(self) -> _InputCollector:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._first.clear()
        missing = [n for n in self.modules if n not in self.leader_of]
        if missing and exc[0] is None:
            # No inputs: every alpha has zero error, so the search keeps alpha = 0 (round to nearest).
            log.warning("awq: %d layers were never called during calibration (%s); they get s = 1",
                        len(missing), ", ".join(missing[:3]))
            for name in missing:
                self.stats[name] = InputStats.for_module(self.modules[name])
                self.leader_of[name] = name
                self.members[name] = [name]

    def groups(self) -> list[tuple[tuple[str, ...], InputStats]]:
        return [(tuple(self.members[leader]), self.stats[leader]) for leader in self.members]




@torch.no_grad()
def awq_quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    calibration: CalibrationSet | Tensor,
    *,
    config: AWQConfig = AWQConfig(),
    module_filter: ModuleFilter | None = None,
    keep_columns: Mapping[str, Tensor] | None = None,
    progress: bool = False,
) -> list[AWQGroupResult]:
    """AWQ-quantize every selected layer of ``model`` in place; one result per input group.

    Statistics come from the 16-bit model (see the module doc): layers outside the decoder
    stack (if the filter selects any) from one full forward pass before anything changes, the
    blocks' layers block by block from replayed 16-bit block inputs. ``keep_columns[name]``
    masks input columns kept exactly (proxy quantization).
    """
    tokens = window_tokens(calibration, "awq")
    modules, keep = unique_weight_modules(model, module_filter, keep_columns)
    if spec.is_baseline or not modules:
        return []
    device = torch.device(config.device) if config.device is not None else None
    results: list[AWQGroupResult] = []

    def quantize_groups(collector: _InputCollector) -> None:
        for names, stats in collector.groups():
            weights = [weight_matrix(modules[n]).detach().to(stats.gram.device) for n in names]
            result = awq_search(weights, stats, spec, n_grid=config.n_grid,
                                keeps=[keep.get(n) for n in names], names=names)
            for n, W_eff in zip(names, result.weights):
                set_weight_matrix(modules[n], W_eff.to(weight_matrix(modules[n]).device))
            results.append(replace(result, weights=()))  # the weights are in the model now
            log.debug("awq %s: alpha %.2f, output error %.4g (rtn %.4g)", "+".join(names), result.alpha,
                      result.error, result.rtn_error)

    was_training = model.training
    model.eval()
    try:
        stack = find_decoder_blocks(model)
        in_stack = set()
        if stack is not None:
            in_stack = {n for n in modules if any(n.startswith(stack.prefix(i)) for i in range(len(stack.blocks)))}
        rest = {n: m for n, m in modules.items() if n not in in_stack}
        rest_collector = None
        if rest:  # before any weight changes: these layers also see 16-bit inputs
            in_device = input_device(model)
            with _InputCollector(rest, group=config.group_shared_inputs) as rest_collector:
                for row in tokens:
                    model(row[None].to(in_device), use_cache=False)
        if stack is not None and in_stack:
            calls = capture_block_inputs(model, stack.blocks[0], tokens, device=device)
            for i, block in enumerate(tqdm(stack.blocks, desc=f"awq {spec.label}", unit="block", disable=not progress)):
                names = {n: modules[n] for n in modules if n.startswith(stack.prefix(i))}
                with on_device(block, device):
                    if not names:
                        calls = run_block(block, calls)
                        continue
                    with _InputCollector(names, group=config.group_shared_inputs) as collector:
                        outputs = run_block(block, calls)  # the next block's 16-bit inputs
                    quantize_groups(collector)
                calls = outputs
            del calls
        if rest_collector is not None:
            quantize_groups(rest_collector)
    finally:
        model.train(was_training)
    return results


def awq_ledger(
    model: nn.Module,
    spec: QuantSpec,
    groups: Sequence[AWQGroupResult],
    *,
    module_filter: ModuleFilter | None = None,
    keep_columns: Mapping[str, Tensor] | None = None,
) -> BitLedger:
    """The round-to-nearest ledger of ``spec`` (kept columns included) plus one row per input
    group for its 16-bit scale vector: ``in_features × 16`` bits of ``other_bits``, ``numel = 0``."""
    base = ledger_for(model, spec, module_filter, keep_columns=keep_columns)
    extra = tuple(
        LedgerRow(f"{'+'.join(g.names)}:awq_scale", 0, 0, 0, g.in_features * SCALE_VECTOR_BITS) for g in groups
    )
    return BitLedger(base.rows + extra, base.n_params, base.unquantized_bits)


@register_method
class AWQ(QuantMethod):
    """AWQ (Lin et al. 2023): per-input-channel scales ``mean|x|^α`` from calibration
    activations, ``α`` searched per input group for the lowest output error, then round to
    nearest of the scaled weights; the 16-bit scale vectors are charged to the ledger."""

    name = "awq"
    config_class = AWQConfig
    needs_calibration = True
    seed_matters = True
    # one 16-bit pass over the windows; the alpha search works on d_in x d_in Gram matrices
    calibration_passes = 1.0
    description = "activation-aware weight quantization with calibration windows (Lin et al. 2023)"

    def quantize(self, model, spec, config, *, module_filter=None, calibration=None,
                 outlier_pairs=(), progress=False) -> BitLedger:
        self.check(spec)
        tokens = window_tokens(calibration, "awq")  # fail before any work
        keep = keep_columns_for(model, spec, outlier_pairs=outlier_pairs or None, module_filter=module_filter)
        start = time.perf_counter()
        groups = awq_quantize_model(model, spec, tokens, config=config, module_filter=module_filter,
                                    keep_columns=keep, progress=progress)
        ledger = awq_ledger(model, spec, groups, module_filter=module_filter, keep_columns=keep)
        if groups:
            err, rtn = sum(g.error for g in groups), sum(g.rtn_error for g in groups)
            log.info(
                "awq quantized %d input groups spec=%s in %.1fs: mean alpha %.3f, calibration output "
                "error %.4g (rtn %.4g), bits_per_param=%.4f",
                len(groups), spec.label, time.perf_counter() - start,
                sum(g.alpha for g in groups) / len(groups), err, rtn, ledger.bits_per_param,
            )
        return ledger
