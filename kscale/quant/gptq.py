"""One-shot GPTQ (Frantar et al. 2022) for every kscale data type and block size.

GPTQ quantizes one linear layer at a time so that the layer's output on calibration
inputs changes as little as possible. Notation (the paper's, used throughout this module):

* ``W`` ``[rows, cols]``: the layer's weight as ``y = W x`` (rows = output units,
  cols = input features; transformers' ``Conv1D`` is transposed into this layout).
* ``X`` ``[cols, n]``: the ``n`` calibration input vectors of the layer.
* ``H = 2 X Xᵀ`` ``[cols, cols]``: the Hessian of the layer-wise loss ``‖W X − Q X‖²``
  with respect to one row of ``W``, identical for all rows.
* ``Q`` ``[rows, cols]``: the quantized (dequantized, i.e. representable) weights.
* ``Hinv``: the *upper Cholesky factor* of ``H⁻¹`` (after damping). Row ``i`` of it,
  from the diagonal on, is exactly what the Optimal Brain Quantizer update needs after
  columns ``0..i-1`` are fixed (GPTQ paper §4, "Step 3: Cholesky reformulation").

Algorithm (GPTQ paper, Algorithm 1): sweep the columns in a fixed order; quantize column
``i`` to ``q``, and spread its error ``(w − q) / Hinv[i, i]`` onto the not yet quantized
columns with row ``i`` of ``Hinv``. Updates are applied lazily: inside a batch of
``column_block`` (128) columns immediately, to the columns after the batch with one matrix
product at the end of the batch (paper §4, "Step 2: lazy batch-updates"). Dead inputs
(``H_ii = 0``: the feature is always zero on the calibration data) get ``H_ii = 1`` and a
zero weight column, as in the reference code; ``H`` is damped by ``damp · mean(diag H)``.

**The kscale quantizer inside GPTQ.** kscale stores weights in *blocks* (Dettmers &
Zettlemoyer 2022 §2.3): ``W`` is flattened row-major and cut into consecutive blocks of
``blocksize`` values, each with its own constants (absmax scale, and an offset when
``centered``); the trailing partial block, if any, gets its own. ``blocksize=None`` means one
block per row. A column's values are quantized with the codebook of the spec and the
constants of the block each value belongs to. **Rule:** the constants of a block are
computed from the *current* (error-updated) weights of the block at the moment the column
sweep first reaches any of its (quantized) elements. This single rule gives

* ``blocksize`` dividing ``cols``, natural order: each block is ``blocksize`` consecutive
  columns of one row, its constants are computed when the sweep enters those columns —
  exactly GPTQ's ``groupsize`` behaviour;
* ``blocksize=None``: per-row constants computed up front (from the dead-zeroed weights),
  as GPTQ without grouping;
* ``blocksize`` not dividing ``cols``: a block may cover the tail of row ``r`` and the head
  of row ``r+1``; its constants are computed when the sweep reaches its first column (for
  natural order, column 0 of row ``r+1``'s part), from the weights of *both* parts as they
  are then. Elements of a block that lie in later columns have received all error feedback
  up to that moment (pending lazy updates are flushed first), so the result equals an
  eager, column-by-column implementation;
* act-order: the same rule with "first" meaning first in the permuted sweep order, so
  the stored layout (and the ledger) never depends on the order.

The codebook is computed once, from the original weights (this matters only for
``quantile``, whose code is the empirical quantiles of the tensor).

**Proxy quantization** (kept columns, :func:`gptq_quantize_matrix`): as in round-to-nearest,
columns kept in 16 bit stay bit-identical and are left out of the block layout; GPTQ runs
on the remaining sub-matrix with ``H`` restricted to its columns. Treating kept columns as
exact is the same as sweeping them first with zero error (the inverse of a principal
sub-matrix of ``H`` is the Schur complement that GPTQ's update uses).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from kscale.quant.calibration import CalibrationConfig, CalibrationSet, window_tokens
from kscale.quant.core import block_constants, codebook
from kscale.quant.filter import ModuleFilter
from kscale.quant.ledger import BitLedger, ledger_for
from kscale.quant.methods import CalibratedConfig, QuantMethod, register_method
from kscale.quant.modules import set_weight_matrix, weight_matrix
from kscale.quant.outliers import keep_columns_for
from kscale.quant.sequential import calibrate_blockwise, unique_weight_modules
from kscale.quant.spec import QuantSpec

log = logging.getLogger(__name__)

#: Sweep position of columns that are never swept; the identity of ``amin`` in
#: :meth:`BlockMap.first_position` (blocks made only of such columns never start).
_NEVER = torch.iinfo(torch.int64).max


class ColumnQuantizer(Protocol):
    """The data-type half of a blockwise quantizer, as GPTQ needs it.

    kscale's blockwise mapping is fixed (normalise ``(x − offset) / scale``, round to a code,
    dequantize ``code · scale + offset``, all in float32); a quantizer supplies the rest:
    ``constants`` chooses a block's stored parameters from its values (GPTQ's
    ``find_params``), ``nearest`` rounds normalised values to the codebook.
    """

    def constants(self, values: Tensor) -> tuple[Tensor, Tensor | None]:
        """``values`` ``[n_blocks, length]`` -> float32 ``(scale [n_blocks], offset [n_blocks] | None)``."""

    def nearest(self, x_normalized: Tensor) -> Tensor:
        """Elementwise nearest code value (float32) of normalised values."""


@dataclass(frozen=True)
class BlockMap:
    """Row-major blocks of ``blocksize`` values over a ``[rows, cols]`` matrix.

    Element ``(r, c)`` has flat index ``f = r·cols + c`` and belongs to block ``f // B``;
    ``blocksize=None`` means ``B = cols`` (one block per row).
    """

    rows: int
    cols: int
    blocksize: int | None

    @property
    def length(self) -> int:
        """Block length ``B``."""
        return self.cols if self.blocksize is None else int(self.blocksize)

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.length)

    @property
    def tail(self) -> int:
        """Length of the last block (``B`` unless ``numel`` is not a multiple of ``B``)."""
        return self.numel - (self.n_blocks - 1) * self.length

    def block_ids(self, columns: Tensor, row_base: Tensor) -> Tensor:
        """Block id ``[rows, len(columns)]`` of every element of the given columns;
        ``row_base = arange(rows) * cols``."""
        return torch.div(row_base[:, None] + columns[None, :], self.length, rounding_mode="floor")

    def elements(self, blocks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rows, columns ``[len(blocks), B]`` of the given blocks and a validity mask
        (False past the end of the trailing partial block)."""
        flat = blocks[:, None] * self.length + torch.arange(self.length, device=blocks.device)
        valid = flat < self.numel
        flat = torch.where(valid, flat, torch.zeros_like(flat))
        return torch.div(flat, self.cols, rounding_mode="floor"), flat % self.cols, valid

    def first_position(self, pos: Tensor) -> Tensor:
        """For each block, the smallest sweep position among its elements.

        ``pos`` ``[cols]`` (int64) is each column's position in the sweep (``_NEVER`` for
        columns that are not swept). A block whose elements are all unswept gets ``_NEVER``.
        """
        B = self.length
        if self.cols % B == 0:
            # Blocks never straddle rows: block (r, g) covers columns [g·B, (g+1)·B) of row r.
            per_row = pos.view(self.cols // B, B).amin(dim=1)  # [cols // B]
            return per_row.repeat(self.rows)  # [rows · cols // B]
        first = torch.full((self.n_blocks,), _NEVER, dtype=torch.int64, device=pos.device)
        chunk = max(1, (1 << 22) // self.cols)  # rows per chunk, bounds the index memory
        cols = torch.arange(self.cols, device=pos.device)
        for r0 in range(0, self.rows, chunk):
            r1 = min(self.rows, r0 + chunk)
            flat = torch.arange(r0, r1, device=pos.device)[:, None] * self.cols + cols  # [r, cols]
            block = torch.div(flat, B, rounding_mode="floor").reshape(-1)
            first.scatter_reduce_(0, block, pos.expand(r1 - r0, -1).reshape(-1), reduce="amin")
        return first


@dataclass(frozen=True)
class GPTQResult:
    """Output of :func:`gptq_quantize`.

    Attributes:
        Q: quantized weights ``[rows, cols]`` in the input's layout (kept columns identical).
        loss: GPTQ's proxy loss ``Σ (w − q)² / (2 Hinv_ii²)`` over the swept columns
            (the layer-output error increase predicted by the OBS formula).
        damp: the relative damping that was finally used (raised if ``H`` was not
            positive definite).
        order: the sweep order (original column indices, kept columns excluded).
    """

    Q: Tensor
    loss: float
    damp: float
    order: Tensor


def inverse_hessian_factor(H: Tensor) -> Tensor | None:
    """Upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = Uᵀ U``), or None if ``H`` is not PD.

    Computed as in the reference: Cholesky of ``H``, ``cholesky_inverse``, then an upper
    Cholesky of the inverse; row ``i`` of ``U`` holds ``[H_F⁻¹]_{i,:} / sqrt([H_F⁻¹]_{ii})``
    for ``F`` = columns ``i..``, which is the OBS update direction of paper eq. (3).
    """
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        return None
    Hinv = torch.cholesky_inverse(L)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if int(info) != 0:
        return None
    return U


def _factor_with_damping(H: Tensor, damp: float, retries: int = 4) -> tuple[Tensor, float]:
    """Damp ``H`` by ``damp · mean(diag H)`` and factor it; raise the damping tenfold on failure."""
    mean_diag = H.diagonal().mean()
    for _ in range(retries + 1):
        Hd = H.clone()
        Hd.diagonal().add_(damp * mean_diag)
        U = inverse_hessian_factor(Hd)
        if U is not None:
            return U, damp
        log.warning("H is not positive definite with damp=%g; retrying with %g", damp, damp * 10)
        damp *= 10
    raise ValueError(
        f"GPTQ: the Hessian is not positive definite even with damp={damp / 10:g}; "
        "check the calibration inputs for NaN/inf or use more calibration samples"
    )


def gptq_quantize(
    W: Tensor,
    H: Tensor,
    quantizer: ColumnQuantizer,
    *,
    blocksize: int | None,
    damp: float = 0.01,
    act_order: bool = False,
    column_block: int = 128,
) -> GPTQResult:
    """Quantize every column of ``W`` ``[rows, cols]`` with GPTQ given ``H`` ``[cols, cols]``.

    The numerical kernel (see the module doc for the algorithm and the block-constant rule);
    :func:`gptq_quantize_matrix` adds kept columns and builds the quantizer from a spec.

    Args:
        W: weights in ``y = W x`` layout; float64 input is computed in float64, anything else
            in float32.
        H: ``2 X Xᵀ`` over the calibration inputs (any positive scale).
        quantizer: blockwise constants + rounding (:class:`KbitQuantizer` for a ``QuantSpec``).
        blocksize: the storage block length ``B`` (``None``: one block per row).
        damp: relative damping λ, added as ``λ · mean(diag H)`` to the diagonal.
        act_order: sweep columns by decreasing ``diag(H)`` (GPTQ's ``--act-order``).
        column_block: lazy-batch width (GPTQ's ``blocksize``, 128).
    """
    if W.ndim != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"need W [rows, cols] and H [cols, cols]; got {tuple(W.shape)} and {tuple(H.shape)}")
    if column_block < 1:
        raise ValueError(f"column_block must be >= 1; got {column_block}")
    if damp < 0:
        raise ValueError(f"damp must be >= 0; got {damp}")
    rows, cols = W.shape
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    device = W.device
    H = H.detach().to(device=device, dtype=dtype).clone()

    dead = H.diagonal() == 0  # inputs that are always zero: any weight is exact on the data
    H.diagonal()[dead] = 1.0
    W = W.detach().to(dtype).clone()
    W[:, dead] = 0.0

    order = torch.arange(cols, device=device)
    if act_order:
        order = torch.argsort(H.diagonal(), descending=True, stable=True)
    pos = torch.empty_like(order)
    pos[order] = torch.arange(cols, device=device)  # sweep position of each original column
    Hinv, used_damp = _factor_with_damping(H[order][:, order], damp)

    layout = BlockMap(rows, cols, blocksize)
    first = layout.first_position(pos)  # [n_blocks]: sweep step at which each block starts
    schedule = torch.argsort(first, stable=True)
    starts = torch.searchsorted(first[schedule], torch.arange(cols + 1, device=device)).tolist()
    scale = torch.empty(layout.n_blocks, dtype=torch.float32, device=device)  # stored constants
    offset: Tensor | None = None
    row_base = torch.arange(rows, device=device) * cols

    # Working copies are kept transposed, [cols, rows] in sweep order, so that a column of W
    # is a contiguous row in memory (the sweep touches one column at a time).
    Wt = W.t()[order].contiguous()  # [cols, rows]
    Qt = torch.empty_like(Wt)
    loss = torch.zeros((), dtype=dtype, device=device)
    for i1 in range(0, cols, column_block):
        i2 = min(i1 + column_block, cols)
        W1 = Wt[i1:i2]  # [count, rows], a view: updates inside the batch land in Wt directly
        Hinv1 = Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)  # [count, rows]
        batch_blocks = layout.block_ids(order[i1:i2], row_base).t()  # [count, rows]
        flushed = 0  # errors Err1[:flushed] were already pushed to Wt[i2:]
        seg = False  # constants of the batch's columns from `seg_start` on are gathered
        for i in range(i2 - i1):
            t = i1 + i
            if starts[t + 1] > starts[t]:  # blocks first reached here: fix their constants
                blocks = schedule[starts[t] : starts[t + 1]]
                r, c, valid = layout.elements(blocks)  # [n_new, B] each
                p = pos[c]
                if i > flushed and bool((p[valid] >= i2).any()):
                    # Some elements lie beyond this lazy batch: apply the pending updates now
                    # so the constants see the same weights as an eager sweep would.
                    Wt[i2:] -= Hinv[i1 + flushed : i1 + i, i2:].t() @ Err1[flushed:i]
                    flushed = i
                blk_scale, blk_offset = _block_constants(quantizer, blocks, Wt[p, r], layout)
                scale[blocks] = blk_scale
                if blk_offset is not None:
                    if offset is None:
                        offset = torch.zeros(layout.n_blocks, dtype=torch.float32, device=device)
                    offset[blocks] = blk_offset
                seg = False
            if not seg:
                seg, seg_start = True, i
                ids = batch_blocks[i:]
                seg_scale = scale[ids]  # [count - i, rows]
                seg_safe = torch.where(seg_scale == 0, torch.ones_like(seg_scale), seg_scale)
                seg_offset = None if offset is None else offset[ids]
            j = i - seg_start
            w = W1[i]  # column order[t] of W, [rows]
            x = w.float() if seg_offset is None else w.float() - seg_offset[j]
            q = quantizer.nearest(x / seg_safe[j]) * seg_scale[j]
            if seg_offset is not None:
                q = q + seg_offset[j]
            q = q.to(dtype)
            Qt[t] = q
            err = (w - q) / Hinv1[i, i]
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1)  # OBS update of the batch's later columns
            Err1[i] = err
        loss += Err1.pow(2).sum() / 2
        if i2 < cols:
            Wt[i2:] -= Hinv[i1 + flushed : i2, i2:].t() @ Err1[flushed:]

    Q = torch.empty_like(W)
    Q[:, order] = Qt.t()
    return GPTQResult(Q=Q, loss=float(loss), damp=used_damp, order=order)


def gptq_quantize_matrix(
    W: Tensor,
    H: Tensor,
    spec: QuantSpec,
    *,
    keep: Tensor | None = None,
    damp: float = 0.01,
    act_order: bool = False,
    column_block: int = 128,
) -> GPTQResult:
    """GPTQ counterpart of :func:`kscale.quant.quantize_matrix`: quantize ``W`` ``[out, in]``
    to ``spec``; input columns where ``keep`` is True stay bit-identical.

    As in round-to-nearest, kept columns are left out of the block layout: the
    ``[out, in − kept]`` sub-matrix is blocked (and, for ``quantile``, supplies the codebook).
    GPTQ then runs on that sub-matrix with ``H`` restricted to its columns: kept columns are
    exact, and an exact column has zero error to feed back, so this equals sweeping the kept
    columns first (the inverse of a principal sub-matrix of ``H`` is the Schur complement
    GPTQ's update would use); λ is relative to the restricted ``mean(diag H)``.
    Returns the result with ``Q`` in ``W``'s dtype and full shape.
    """
    cols = W.shape[1]
    if keep is not None:
        keep = keep.to(W.device)
        if keep.dtype != torch.bool or keep.shape != (cols,):
            raise ValueError(f"keep must be a bool mask of shape ({cols},); got {keep.dtype} {tuple(keep.shape)}")
    kwargs = dict(blocksize=spec.blocksize, damp=damp, act_order=act_order, column_block=column_block)
    if keep is None or not bool(keep.any()):
        result = gptq_quantize(W, H, KbitQuantizer(spec, W), **kwargs)
        return replace(result, Q=result.Q.to(W.dtype))
    Q = W.detach().clone()
    swept = torch.nonzero(~keep).flatten()
    if swept.numel() == 0:
        return GPTQResult(Q=Q, loss=0.0, damp=damp, order=swept)
    Ws = W.detach()[:, swept]
    result = gptq_quantize(Ws, H[swept][:, swept], KbitQuantizer(spec, Ws), **kwargs)
    Q[:, swept] = result.Q.to(W.dtype)
    return replace(result, Q=Q, order=swept[result.order])


def _block_constants(
    quantizer: ColumnQuantizer, blocks: Tensor, values: Tensor, layout: BlockMap
) -> tuple[Tensor, Tensor | None]:
    """Constants of ``blocks`` from ``values`` ``[len(blocks), B]``; the trailing partial
    block (if among them) is handled on its own with its true length."""
    last = layout.n_blocks - 1
    if layout.tail == layout.length or not bool((blocks == last).any()):
        return quantizer.constants(values)
    is_last = blocks == last
    scale = torch.empty(blocks.numel(), dtype=torch.float32, device=values.device)
    offset = None
    parts = [(~is_last, values[~is_last]), (is_last, values[is_last][:, : layout.tail])]
    for mask, part in parts:
        if part.shape[0] == 0:
            continue
        s, o = quantizer.constants(part)
        scale[mask] = s
        if o is not None:
            if offset is None:
                offset = torch.zeros_like(scale)
            offset[mask] = o
    return scale, offset


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class GPTQConfig(CalibratedConfig):
    """Everything GPTQ needs besides the spec; each field is recorded via :meth:`to_row`.

    Attributes:
        calibration: which calibration windows (dataset, split, nsamples, seqlen, seed).
        damp: relative damping λ: ``λ · mean(diag H)`` is added to ``diag H`` (GPTQ: 0.01).
        act_order: sweep columns by decreasing ``diag H`` (GPTQ's ``--act-order``); the
            storage blocks stay in the natural layout (see module doc).
        column_block: lazy-batch width of the column sweep (GPTQ: 128). Changes speed only.
        sequential: quantize block by block with inputs from the already-quantized blocks
            (GPTQ's ``*_sequential``); False collects all Hessians from the 16-bit model.
        device: where each decoder block is moved while it is quantized (``None``: where
            the model is). Only one block is on that device at a time.
        progress: show a tqdm bar over decoder blocks.
    """

    damp: float = 0.01
    act_order: bool = False
    column_block: int = 128
    sequential: bool = True
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not 0 <= self.damp < 1:
            raise ValueError(f"gptq damp must be a number in [0, 1) (fraction of mean(diag H)); got {self.damp!r}")
        if isinstance(self.column_block, bool) or not isinstance(self.column_block, int) or self.column_block < 1:
            raise ValueError(f"gptq column_block must be an integer >= 1; got {self.column_block!r}")
        for name in ("act_order", "sequential", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"gptq {name} must be True or False; got {getattr(self, name)!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, *, seed: int | None = None,
                     own_corpus: str | None = None) -> GPTQConfig:
        """Build from a flat options mapping: calibration keys (``dataset``, ``nsamples``,
        ``seqlen``, ...) and GPTQ keys (``damp``, ``act_order``, ``column_block``,
        ``sequential``, ``device``, ``progress``). For direct callers, ``seed`` may also be
        given in ``options``, and a ready ``calibration`` (a :class:`CalibrationConfig`)."""
        options = dict(options or {})
        options.pop("outlier_pairs", None)
        seed = options.pop("seed", 0) if seed is None else seed
        calibration = options.pop("calibration", None)
        config = super().from_options(options, seed=seed, own_corpus=own_corpus)
        if isinstance(calibration, CalibrationConfig):
            config = replace(config, calibration=calibration)
        return config

    def to_row(self) -> dict[str, Any]:
        """Identity fields for result rows (``calib_*`` and ``gptq_*``)."""
        return {
            **self.calibration.to_row(),
            "gptq_damp": self.damp,
            "gptq_act_order": self.act_order,
            "gptq_column_block": self.column_block,
            "gptq_sequential": self.sequential,
        }


# ----------------------------------------------------------------------------- kscale quantizer


class KbitQuantizer:
    """:class:`ColumnQuantizer` for a :class:`~kscale.quant.spec.QuantSpec`, so that GPTQ
    rounds exactly as ``fake_quantize``: the spec's codebook (``quantile``: estimated once
    from the original weights ``W``, as ``fake_quantize`` would), block constants from
    :func:`kscale.quant.block_constants` (rounded to their stored precision), and the
    nearest-code rule of :func:`kscale.quant.nearest_code` (midpoint ``bucketize``, ties to
    the lower code), with the midpoints computed once instead of per column."""

    def __init__(self, spec: QuantSpec, W: Tensor) -> None:
        if spec.is_baseline:
            raise ValueError("GPTQ needs bits in 2..8; bits=16 is the unquantized baseline")
        self.spec = spec
        self.code = codebook(spec, w=W.float()).to(device=W.device, dtype=torch.float32)
        self.mids = (self.code[1:] + self.code[:-1]) / 2  # as nearest_code computes them

    def constants(self, values: Tensor) -> tuple[Tensor, Tensor | None]:
        scale, offset = block_constants(values, self.spec)  # [n, 1] each, float32
        return scale.reshape(-1), None if offset is None else offset.reshape(-1)

    def nearest(self, x_normalized: Tensor) -> Tensor:
        return self.code[torch.bucketize(x_normalized, self.mids)]


# ----------------------------------------------------------------------------- model level



def quantize_layer(
    module: nn.Module,
    H: Tensor,
    spec: QuantSpec,
    config: GPTQConfig = GPTQConfig(),
    *,
    keep: Tensor | None = None,
    device: torch.device | str | None = None,
) -> GPTQResult:
    """GPTQ-quantize one ``nn.Linear``/``Conv1D`` in place from its Hessian ``H``.

    Computed in float32 (float64 for float64 weights) on ``device`` (default: the weight's);
    ``keep`` masks input columns kept bit-identical (fp16/bf16 -> fp32 -> back is exact).
    """
    W = weight_matrix(module)  # [out, in], a view of the stored weight
    work = device or W.device
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    result = gptq_quantize_matrix(
        W.detach().to(device=work, dtype=dtype),
        H.to(work),
        spec,
        keep=None if keep is None else keep.to(work),
        damp=config.damp,
        act_order=config.act_order,
        column_block=config.column_block,
    )
    set_weight_matrix(module, result.Q.to(device=W.device, dtype=W.dtype))
    return result


def gptq_quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    calibration: CalibrationSet | Tensor,
    *,
    config: GPTQConfig = GPTQConfig(),
    module_filter: ModuleFilter | None = None,
    keep_columns: Mapping[str, Tensor] | None = None,
) -> dict[str, GPTQResult]:
    """Quantize every selected layer of ``model`` in place with GPTQ; returns name -> result.

    Sequential as GPTQ's ``opt_sequential`` (see :func:`kscale.quant.sequential.calibrate_blockwise`):
    each decoder block's layers are calibrated on the outputs of the already-quantized blocks
    before it, all layers of a block from the same inputs. ``keep_columns[name]`` masks input
    columns kept exactly (proxy quantization).
    """
    tokens = window_tokens(calibration, "gptq")
    modules, keep = unique_weight_modules(model, module_filter, keep_columns)
    keep_columns = keep
    results: dict[str, GPTQResult] = {}
    if spec.is_baseline or not modules:
        return results
    device = torch.device(config.device) if config.device is not None else None

    def quantize_all(hessians: Mapping[str, Tensor]) -> None:
        for name, H in hessians.items():
            results[name] = quantize_layer(modules[name], H, spec, config, keep=keep_columns.get(name), device=device)
            log.debug("gptq %s: loss %.4g", name, results[name].loss)

    calibrate_blockwise(
        model, modules, tokens, quantize_all,
        sequential=config.sequential, device=device, progress=config.progress, desc="gptq",
    )
    return results


@register_method
class GPTQ(QuantMethod):
    """GPTQ (Frantar et al. 2023): column-by-column rounding with second-order error feedback
    from calibration activations, block by block through the decoder. It changes values, not
    storage, so the ledger is the round-to-nearest one for the same spec and kept columns."""

    name = "gptq"
    config_class = GPTQConfig
    needs_calibration = True
    seed_matters = True
    # opt_sequential runs each block twice (Hessian hooks, then the quantized block's outputs for
    # the next), and H = 2 X X^T costs ~1.75 block multiply-adds per token
    calibration_passes = 3.75
    description = "GPTQ with calibration windows (Frantar et al. 2023)"

    def quantize(self, model, spec, config, *, module_filter=None, calibration=None,
                 outlier_pairs=(), progress=False) -> BitLedger:
        self.check(spec)
        config = replace(config, progress=bool(progress and config.progress))
        keep = keep_columns_for(model, spec, outlier_pairs=outlier_pairs or None, module_filter=module_filter)
        ledger = ledger_for(model, spec, module_filter=module_filter, keep_columns=keep)
        start = time.perf_counter()
        results = gptq_quantize_model(
            model, spec, window_tokens(calibration, "gptq"), config=config,
            module_filter=module_filter, keep_columns=keep,
        )
        log.info(
            "gptq quantized %d matrices spec=%s in %.1fs (proxy loss %.4g, bits_per_param=%.4f)",
            len(results), spec.label, time.perf_counter() - start,
            sum(r.loss for r in results.values()), ledger.bits_per_param,
        )
        return ledger
