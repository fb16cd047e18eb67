"""``METHODS``: quantization methods as registered objects.

A sweep must not know what any method is. Everything method-specific lives in one object per
method (torchao's "config type -> handler" idea, STYLE §1.5), registered under the name that is
also the config option and the value written in result rows:

* ``config_class``: a frozen, validated dataclass of the method's options (``from_options``
  rejects unknown keys with a did-you-mean; ``to_row`` gives the columns the method adds to a
  row, e.g. ``calib_*``/``gptq_*``). No untyped options dicts reach a method.
* ``needs_calibration``: the job draws calibration windows (:class:`CalibratedConfig`) once per
  distinct calibration config and hands them to :meth:`QuantMethod.quantize`.
* ``seed_matters``: whether the ``seed`` axis changes the result (calibration sampling). The grid
  collapses the axis (recorded as 0) for methods where it does not.
* :meth:`QuantMethod.check`: which specs the method can run. ``none`` (the unquantized baseline)
  runs only at ``bits=16``; every other method only at k < 16 (the grid maps ``bits=16`` to the
  baseline). Violations are rejected before anything loads, naming the rule.
* :meth:`QuantMethod.quantize` quantizes in place and returns the :class:`BitLedger` of what the
  model now costs; whatever the method stores beyond the k-bit codes (a 16-bit per-channel
  vector, kept outlier columns) must be in that ledger.

Adding a method is one module plus one YAML (``conf/method_options/<name>.yaml``); see ``awq.py``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from torch import nn

from kscale.quant.calibration import CalibrationConfig, CalibrationSet
from kscale.quant.filter import ModuleFilter
from kscale.quant.formats import format_of
from kscale.quant.imatrix import imatrix_for
from kscale.quant.ledger import BitLedger, ledger_for
from kscale.quant.model import quantize_model
from kscale.quant.outliers import keep_columns_for
from kscale.quant.spec import QuantSpec
from kscale.registry import Registry, did_you_mean

__all__ = [
    "BASELINE_METHOD", "METHODS", "CalibratedConfig", "MethodConfig", "NoOptions", "QuantMethod",
    "apply_method", "get_method", "rtn",
]

#: The registered name of the unquantized 16-bit baseline.
BASELINE_METHOD = "none"


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's options: frozen, validated in ``__post_init__``, built from the
    flat mapping a config file gives (``method_options.<name>``)."""

    @classmethod
    def option_names(cls) -> list[str]:
        return sorted(f.name for f in fields(cls))

    @classmethod
    def reject_unknown(cls, options: Mapping[str, Any]) -> None:
        allowed = cls.option_names()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, unknown))}."
                f"{did_you_mean(unknown[0], allowed)} Allowed: {', '.join(allowed) or 'none'}"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None):
        options = dict(options or {})
        cls.reject_unknown(options)
        return cls(**options)

    def to_row(self) -> dict[str, Any]:
        """Columns this method adds to a result row (resolved values)."""
        return {}


@dataclass(frozen=True)
class NoOptions(MethodConfig):
    """A method without options (``rtn``, ``none``)."""


@dataclass(frozen=True)
class CalibratedConfig(MethodConfig):
    """Options of a method that sees calibration text.

    The flat keys ``dataset, split, nsamples, seqlen, source, path`` build ``calibration``;
    ``dataset: null`` means the model family's own corpus (the toy language for ``toy``),
    else WikiText-2. The window seed is the sweep's ``seed`` axis, not an option.
    """

    calibration: CalibrationConfig = CalibrationConfig()

    CALIBRATION_KEYS: ClassVar[tuple[str, ...]] = ("dataset", "split", "nsamples", "seqlen", "source", "path")

    @classmethod
    def option_names(cls) -> list[str]:
        return sorted(({f.name for f in fields(cls)} - {"calibration"}) | set(cls.CALIBRATION_KEYS))

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, *, seed: int = 0,
                     own_corpus: str | None = None):
        options = dict(options or {})
        cls.reject_unknown(options)
        cal = {k: options.pop(k) for k in cls.CALIBRATION_KEYS if k in options}
        if cal.get("dataset") is None:
            cal.pop("dataset", None)
            if own_corpus:
                cal["dataset"] = own_corpus
        calibration = CalibrationConfig(**cal, seed=int(seed))
        return cls(calibration=calibration, **options)

    def to_row(self) -> dict[str, Any]:
        return self.calibration.to_row()


class QuantMethod:
    """A quantization method; subclass, set the class attributes, implement :meth:`quantize`."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = NoOptions
    needs_calibration: ClassVar[bool] = False
    seed_matters: ClassVar[bool] = False
    #: forward-pass equivalents per calibration token (for ``plan=true`` cost estimates)
    calibration_passes: ClassVar[float] = 0.0
    description: ClassVar[str] = ""

    def configure(self, options: Mapping[str, Any] | None = None, *, seed: int = 0,
                  own_corpus: str | None = None) -> MethodConfig:
        """The validated config for ``options``; calibrated methods also take the window seed
        and the family's own corpus (the default calibration text)."""
        try:
            if issubclass(self.config_class, CalibratedConfig):
                return self.config_class.from_options(options, seed=seed, own_corpus=own_corpus)
            return self.config_class.from_options(options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"method {self.name}: {err}") from None

    def check(self, spec: QuantSpec) -> None:
        """Raise ``ValueError`` naming the rule if this method cannot run ``spec`` (any format
        config; a format that only rounds to nearest rejects the other methods by name)."""
        if spec.is_baseline:
            raise ValueError(
                f"method {self.name} quantizes to k < 16 bits; bits=16 is the unquantized "
                f"baseline, which is method={BASELINE_METHOD}"
            )
        format_of(spec).check_method(self.name)

    def calibration_config(self, config: MethodConfig, spec: Any, *,
                           own_corpus: str | None = None) -> CalibrationConfig | None:
        """The calibration windows a cell needs: a calibrated method's own, else -- for a format
        that weights rounding by calibration statistics (a GGUF type with ``imatrix=true``) --
        the default calibration config on the family's own corpus (WikiText-2 otherwise)."""
        if isinstance(config, CalibratedConfig):
            return config.calibration
        if getattr(spec, "needs_calibration", False):
            return CalibrationConfig(**({"dataset": own_corpus} if own_corpus else {}))
        return None

    def with_calibration(self, config: MethodConfig, calibration: CalibrationSet | None) -> MethodConfig:
        """``config`` with the calibration fields as actually drawn (resolved seqlen/split)."""
        if calibration is not None and isinstance(config, CalibratedConfig):
            return replace(config, calibration=calibration.config)
        return config

    def row(self, config: MethodConfig) -> dict[str, Any]:
        """The columns this method writes into a row."""
        return config.to_row()

    def quantize(self, model: nn.Module, spec: QuantSpec, config: MethodConfig, *,
                 module_filter: ModuleFilter | None = None, calibration: CalibrationSet | None = None,
                 outlier_pairs: Sequence[tuple[str, str]] = (), progress: bool = False) -> BitLedger:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<method {self.name}>"


METHODS: Registry[QuantMethod] = Registry("method")


def register_method(cls: type[QuantMethod]) -> type[QuantMethod]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    METHODS.register(cls.name, cls())
    return cls


def get_method(name: str) -> QuantMethod:
    return METHODS.get(name)


@register_method
class Baseline(QuantMethod):
    """The unquantized 16-bit model: nothing changes, every parameter is counted at 16 bits."""

    name = BASELINE_METHOD
    description = "unquantized 16-bit baseline (bits=16 only)"

    def check(self, spec: QuantSpec) -> None:
        if not spec.is_baseline:
            raise ValueError(
                f"method={BASELINE_METHOD} is the unquantized 16-bit baseline and is valid only "
                f"with bits=16; got bits={spec.bits} (choose a quantization method, e.g. "
                f"method=rtn, for k-bit cells)"
            )

    def quantize(self, model, spec, config, *, module_filter=None, calibration=None,
                 outlier_pairs=(), progress=False) -> BitLedger:
        self.check(spec)
        return ledger_for(model, spec, module_filter)


def _keep_columns(model, spec, outlier_pairs, module_filter):
    """Proxy quantization (paper §3): the 16-bit input columns, if ``outlier_frac > 0``."""
    return keep_columns_for(model, spec, outlier_pairs=outlier_pairs or None, module_filter=module_filter)


@register_method
class RoundToNearest(QuantMethod):
    """Zero-shot round-to-nearest (the paper's main method, §2): no data used."""

    name = "rtn"
    description = "round to nearest, no calibration (Dettmers & Zettlemoyer 2022)"

    def quantize(self, model, spec, config, *, module_filter=None, calibration=None,
                 outlier_pairs=(), progress=False) -> BitLedger:
        self.check(spec)
        keep = _keep_columns(model, spec, outlier_pairs, module_filter)
        imatrices = imatrix_for(model, spec, calibration, module_filter)  # GGUF imatrix=true only
        return quantize_model(model, spec, module_filter=module_filter, progress=progress,
                              imatrices=imatrices, **({"keep_columns": keep} if keep else {}))


#: keys of apply_method's ``options`` that are run-time arguments, not method options
_RUNTIME_KEYS = ("progress", "outlier_pairs")


def apply_method(
    name: str,
    model: nn.Module,
    spec: QuantSpec,
    *,
    module_filter: ModuleFilter | None = None,
    calibration: Any = None,
    options: Mapping[str, Any] | None = None,
) -> BitLedger:
    """Quantize ``model`` in place with method ``name`` and return its :class:`BitLedger`.

    A convenience for notebooks and tests: ``options`` holds the method's options (flat, as in
    ``method_options.<name>``; calibrated methods also take ``seed``) plus the run-time keys
    ``progress`` and ``outlier_pairs``. At ``bits=16`` nothing is run and the 16-bit ledger is
    returned for every method (the grid maps that cell to ``method=none``).
    """
    method = METHODS.get(name)  # unknown names raise with did-you-mean
    options = dict(options or {})
    runtime = {k: options.pop(k) for k in _RUNTIME_KEYS if k in options}
    seed = options.pop("seed", 0) if method.needs_calibration else 0
    config = method.configure(options, seed=seed)
    if spec.is_baseline:
        return ledger_for(model, spec, module_filter)
    method.check(spec)
    if method.needs_calibration and isinstance(calibration, CalibrationSet):
        config = method.with_calibration(config, calibration)
    return method.quantize(model, spec, config, module_filter=module_filter, calibration=calibration,
                           outlier_pairs=tuple(runtime.get("outlier_pairs") or ()),
                           progress=bool(runtime.get("progress", False)))


def rtn(model: nn.Module, spec: QuantSpec, *, module_filter: ModuleFilter | None = None,
        **_: Any) -> BitLedger:
    """``apply_method("rtn", ...)`` without options (kept for callers of the old function)."""
    return apply_method("rtn", model, spec, module_filter=module_filter)

