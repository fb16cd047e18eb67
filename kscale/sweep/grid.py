"""The quantization grid of one job: axes -> the list of cells run against one loaded model.

A *cell* is one (method, QuantSpec, seed, method options) applied to a model. The grid is the
cartesian product of the axes, with two canonicalisations that keep it from doing useless work,
both decided by the method objects in ``kscale.quant.METHODS`` (this module names none):

* ``bits=16`` is the unquantized baseline. Its dtype, block size, method and seed are
  meaningless, so every 16-bit combination collapses into one cell per model (the baseline
  method, ``QuantSpec(bits=16)``), run first; its row leaves dtype/blocksize/... empty.
* ``seed`` only matters to methods whose ``seed_matters`` (calibration sampling). For the
  others the seed axis is collapsed and recorded as 0, so ``seed=0,1,2 method=rtn,gptq``
  runs RTN once and GPTQ three times.

Every other combination is checked by its method (:meth:`QuantMethod.check`): the baseline
method at ``bits=4`` is rejected here, before anything loads, naming the rule.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

#: Grid axes inside a job, in the order they vary (outermost first). ``method`` and ``seed`` are
#: cell fields; the others are ``QuantSpec`` fields. The Hydra sweeper keeps comma lists of
#: exactly these (plus ``model.sizes``/``model.revisions``) inside one job.
QUANT_AXES: tuple[str, ...] = (
    "method", "format", "dtype", "bits", "blocksize", "centered", "exponent_bits", "scale_bits",
    "outlier_frac", "imatrix", "seed",
    "act_bits", "act_granularity", "act_dtype", "kv_bits", "kv_granularity", "kv_dtype",
)
#: Run-time precision axes (issue 20 §1; ``kscale.quant.runtime``): every weight cell, the
#: 16-bit one included, is crossed with them; act_bits=16 kv_bits=16 is the weights-only cell.
RUNTIME_AXES: tuple[str, ...] = (
    "act_bits", "act_granularity", "act_dtype", "kv_bits", "kv_granularity", "kv_dtype",
)
#: Axes every cell takes whatever its format; the others belong to the formats that declare them
#: (``StorageFormat.axes``), and a grid crossing a format with an axis it does not take expands
#: per format, leaving that axis out of the format's cells and rows.
CELL_AXES: tuple[str, ...] = ("method", "format", "seed", *RUNTIME_AXES)
DEFAULT_FORMAT = "blockwise"
#: Model-config axes whose comma lists become separate jobs of one plan (one load each).
MODEL_AXES: tuple[str, ...] = ("model.sizes", "model.revisions")
#: Training precision of checkpoints kscale trains itself (the toy's ``kscale.toy.lowbit``, issue 20
#: §4). Each value is another trained model, so a comma list is one job per combination (crossed
#: with sizes and revisions), never an in-job list; the model config need not name them (the
#: sweeper adds them with ``++``), and a family whose provider takes none is rejected by the config.
TRAINING_AXES: tuple[str, ...] = tuple(
    f"model.provider_options.{k}" for k in ("train_bits_w", "train_bits_a", "train_bits_kv", "qat_from"))
#: Their full-precision values: an option set to its default is dropped from the model's options,
#: so ``train_bits_w=4,16`` runs the 16-bit build as the default ladder (same rows, same keys).
TRAINING_DEFAULTS: dict[str, Any] = {"train_bits_w": 16, "train_bits_a": 16, "train_bits_kv": 16, "qat_from": 0.0}
SPEC_FIELDS: tuple[str, ...] = (
    "bits", "dtype", "blocksize", "exponent_bits", "centered", "scale_bits", "outlier_frac",
)
BASELINE_BITS = 16


def _methods():
    """The method registry (imported lazily: importing the grid needs no torch)."""
    from kscale.quant.methods import METHODS

    return METHODS


def baseline_method() -> str:
    from kscale.quant.methods import BASELINE_METHOD

    return BASELINE_METHOD


@dataclass(frozen=True)
class CellSpec:
    """One quantization cell.

    Attributes:
        method: a ``kscale.quant.METHODS`` name (the baseline method for the 16-bit cell).
        quant: the ``QuantSpec``.
        seed: calibration seed (0 for methods that do not sample).
        options: method options as sorted ``(name, value)`` pairs (hashable; JSON values).
        runtime: a ``kscale.quant.runtime.RuntimePrecision`` rounding activations / K and V in
            the forward pass, or ``None`` (weights only; an all-16 precision is stored as None).
    """

    method: str
    quant: Any  # kscale.quant.QuantSpec (kept untyped so importing the grid needs no torch)
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = field(default=())
    runtime: Any = None

    @property
    def is_baseline(self) -> bool:
        """The unquantized 16-bit cell (its metrics are the job's 16-bit reference pass)."""
        return self.quant.is_baseline and self.runtime is None

    @property
    def options_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.options}

    @property
    def label(self) -> str:
        """``int4-b64-rtn`` (``fp16-baseline`` for the baseline): for progress bars and logs."""
        if self.runtime is not None:
            weights = CellSpec(self.method, self.quant, self.seed, self.options).label
            return f"{weights}-{self.runtime.label}"
        if self.is_baseline:
            return "16bit-baseline"
        q = self.quant
        if getattr(q, "format", DEFAULT_FORMAT) != DEFAULT_FORMAT:
            return f"{q.label}-{self.method}"
        text = f"{q.dtype}{q.bits}-b{q.blocksize}-{self.method}"
        if getattr(q, "centered", False):
            text += "-centered"
        if getattr(q, "exponent_bits", None) is not None:
            text += f"-e{q.exponent_bits}"
        if getattr(q, "scale_bits", 16) != 16:
            text += f"-s{q.scale_bits}"
        if getattr(q, "outlier_frac", 0.0):
            text += f"-o{q.outlier_frac:g}"
        if _methods().get(self.method).seed_matters:
            text += f"-seed{self.seed}"
        return text

    def identity(self) -> dict[str, Any]:
        """The cell's part of a row's identity (``QuantSpec.to_row()`` + method/seed/options).

        The baseline's quantization fields other than ``bits`` are None: a 16-bit row has no
        data type or block size, and must not look like one of the grid's."""
        row = {"format": getattr(self.quant, "format", DEFAULT_FORMAT), **self.quant.to_row()}
        if self.quant.is_baseline:
            row = {k: (v if k == "bits" else None) for k, v in row.items()}
        row.update(
            method=self.method,
            seed=self.seed,
            method_options=json.dumps(self.options_dict, sort_keys=True, separators=(",", ":")),
        )
        row.update(_runtime_row(self.runtime))
        return row


def _runtime_row(runtime: Any) -> dict[str, Any]:
    """act_*/kv_* columns (16 and None when off; ``row_key`` leaves the off ones out)."""
    if runtime is None:
        from kscale.quant.runtime import RuntimePrecision

        runtime = RuntimePrecision()
    return runtime.to_row()


def runtime_precisions(axes: Mapping[str, Any]) -> list[Any]:
    """The grid's run-time precisions: ``None`` (weights only) for act_bits=16 kv_bits=16, and
    one ``RuntimePrecision`` per other combination (an off part's granularity/dtype collapse)."""
    if not any(a in axes for a in RUNTIME_AXES):
        return [None]
    from kscale.quant.runtime import RuntimePrecision, RuntimeQuantSpec

    out: dict[Any, None] = {}
    names = [a for a in RUNTIME_AXES if a in axes]
    for combo in itertools.product(*(as_list(axes[a]) for a in names)):
        point = dict(zip(names, combo))
        try:
            parts = {}
            for kind, granularity in (("act", "token"), ("kv", "head")):
                bits = point.get(f"{kind}_bits", 16)
                parts[kind] = RuntimeQuantSpec(kind=kind) if bits == 16 else RuntimeQuantSpec(
                    bits, point.get(f"{kind}_granularity") or granularity,
                    point.get(f"{kind}_dtype") or "int", kind=kind)
        except ValueError as err:
            raise ValueError(f"{err} (grid point {point})") from None
        precision = RuntimePrecision(**parts)
        out.setdefault(None if precision.is_off else precision, None)
    return list(out)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        if all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value) \
                and value:
            return {k: _thaw(v) for k, v in value}
        return [_thaw(v) for v in value]
    return value


def as_list(value: Any) -> list[Any]:
    """A scalar axis value becomes a one-element list; lists/tuples pass through."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _formats():
    from kscale.quant.formats import FORMATS

    return FORMATS


def expand_cells(
    axes: Mapping[str, Any],
    *,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    quant_spec_factory=None,
) -> list[CellSpec]:
    """Expand axis values into the job's cells (baseline first, then grid order, no duplicates).

    Args:
        axes: ``{axis: value or list of values}`` for the names in :data:`QUANT_AXES`.
            Missing axes take the format config's defaults; ``format`` defaults to ``blockwise``.
            Each format is crossed only with the axes it takes (``StorageFormat.axes``);
            ``bits=16`` in the grid gives the one baseline cell whatever the formats.
        method_options: ``{method: {option: value}}``; each cell gets its method's options.
        quant_spec_factory: builds the blockwise config from keyword fields (default
            ``kscale.quant.QuantSpec``; its validation errors propagate as ``ValueError``).

    Raises:
        ValueError: from config validation, with the offending combination appended; an axis
        that no selected format takes (other than the blockwise axes a config file always sets).
    """
    if quant_spec_factory is None:
        from kscale.quant import QuantSpec as quant_spec_factory  # noqa: N813
    registry = _formats()
    # the built-in axes, then any a registered format adds (a format is one file, its axes too)
    known = QUANT_AXES + tuple(sorted({a for _, f in registry.items() for a in f.axes} - set(QUANT_AXES)))
    unknown = sorted(set(axes) - set(known))
    if unknown:
        raise ValueError(f"unknown grid axes {unknown}; allowed: {', '.join(known)}")
    for name in axes:
        if not as_list(axes[name]):
            raise ValueError(f"grid axis {name!r} is an empty list; give at least one value")
    formats = [registry.get(f) for f in dict.fromkeys(as_list(axes.get("format", DEFAULT_FORMAT)))]
    taken = set(CELL_AXES).union(*(f.axes for f in formats))
    orphan = sorted(set(axes) - taken - set(registry.get(DEFAULT_FORMAT).axes))
    if orphan:
        raise ValueError(f"grid axis {orphan[0]!r} is taken by none of the formats "
                         f"{', '.join(f.name for f in formats)}")
    methods = _methods()
    method_options = method_options or {}
    cells: dict[CellSpec, None] = {}
    baseline: CellSpec | None = None
    if BASELINE_BITS in as_list(axes.get("bits", [])):
        baseline = CellSpec(baseline_method(), quant_spec_factory(bits=BASELINE_BITS), 0)
    for fmt in formats:
        names = [a for a in known if a in axes and a != "format" and a not in RUNTIME_AXES
                 and (a in CELL_AXES or a in fmt.axes)]
        values = [as_list(axes[a]) for a in names]
        for combo in itertools.product(*values):
            point = dict(zip(names, combo))
            name = point.pop("method", "rtn")
            seed = point.pop("seed", 0)
            method = methods.get(name)  # unknown names raise with did-you-mean
            if point.get("bits") == BASELINE_BITS or method.name == baseline_method() and \
                    fmt.name != DEFAULT_FORMAT:
                continue  # the baseline cell, made once above
            try:
                spec = quant_spec_factory(**point) if fmt.name == DEFAULT_FORMAT \
                    else fmt.configure(**point)
                method.check(spec)
            except (TypeError, ValueError) as err:
                where = "" if fmt.name == DEFAULT_FORMAT else f" format={fmt.name}"
                raise ValueError(f"{err} (grid point method={name}{where} {point})") from None
            seed = int(seed) if method.seed_matters else 0
            options = _freeze(dict(method_options.get(method.name, {}) or {}))
            cells.setdefault(CellSpec(method.name, spec, seed, options), None)
    weights_only = ([baseline] if baseline else []) + list(cells)
    runtimes = runtime_precisions(axes)
    if runtimes == [None]:
        return weights_only
    return [replace(cell, runtime=rt) for rt in runtimes for cell in weights_only]


def grid_size(axes: Mapping[str, Sequence[Any]]) -> int:
    """Number of raw grid points before canonicalisation (for messages)."""
    n = 1
    for value in axes.values():
        n *= len(as_list(value))
    return n
