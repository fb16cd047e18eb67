"""The per-model state of a job: the loaded model, its evaluation suite, the 16-bit reference
pass, calibration windows, and the columns every row of the job shares.

Why one object: a job loads a model once and runs many cells against it. What a cell needs
beyond its ``CellSpec`` (the family's module filter and outlier pairs, the tokenizer, the
reference metrics, calibration text) is fixed for the job, so it is resolved here once. Nothing
here knows any quantization method by name: a cell's method object (``kscale.quant.METHODS``)
says whether it needs calibration, validates its options and quantizes; the baseline cell is
evaluated through the same path as every other cell, its metrics being the cached 16-bit pass.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kscale.sweep.grid import CellSpec
from kscale.sweep.plan import SweepPlan

log = logging.getLogger(__name__)


def model_identity(model_spec: Any, provider_options: Mapping[str, Any]) -> dict[str, Any]:
    """The model's part of the identity. Provider-built checkpoints (toy) add their build options,
    because a different training budget is a different model under the same size label."""
    from kscale.models import get_family

    fam = get_family(model_spec.family)
    options = dict(provider_options) if fam.provider else {}
    identity = {
        "family": model_spec.family,
        "size": model_spec.size,
        "checkpoint": model_spec.checkpoint,
        "model_dtype": model_spec.dtype,
        "model_options": json.dumps(options, sort_keys=True, separators=(",", ":"), default=str),
    }
    # a training checkpoint other than the final one is another model; the final one keeps the
    # keys it had before revisions existed (its n_tokens follows from the rest: a plain column)
    revision = getattr(model_spec, "revision", None)
    if revision is not None:
        identity["revision"] = revision
    return identity


def job_name(model_spec: Any) -> str:
    """``<family>-<size>`` (``@<revision>`` for a training checkpoint other than the final one)."""
    name = f"{model_spec.family}-{model_spec.size}"
    revision = getattr(model_spec, "revision", None)
    return f"{name}@{revision}" if revision else name


def eval_identity(suite: Any, plan: SweepPlan, family: Any, model: Any) -> dict[str, Any]:
    """Protocol names/settings of every evaluation (resolved against the model: ``rolling``
    windows default to its context), and which tensors are quantized and counted."""
    out = {k if k.startswith("eval_") else f"eval_{k}": v for k, v in suite.identity(model).items()}
    out["eval_batch_size"] = getattr(suite, "batch_size_resolved", plan.eval.batch_size)
    mf = family.module_filter
    out["quant_scope"] = (f"nn.Linear+Conv1D include={','.join(mf.include)} "
                          f"exclude={','.join(mf.exclude)}; other params counted at 16 bit")
    return out


def _take_compile_seconds() -> float | None:
    """Seconds the fused quantization kernels spent compiling since the last call, if known."""
    try:
        from kscale.quant import take_compile_seconds
    except ImportError:
        return None
    return float(take_compile_seconds())


def _take_kernels() -> str | None:
    """Which blockwise kernels (numba, inductor, eager) ran since the last call, if known; None
    for formats whose kernels live in their own packages (GGUF, MX)."""
    try:
        from kscale.quant import take_kernels
    except ImportError:
        return None
    return take_kernels()


@dataclass
class JobContext:
    """Everything fixed for one job; built by :func:`open_job`."""

    plan: SweepPlan
    model_spec: Any
    family: Any
    loaded: Any
    suite: Any
    static: dict[str, Any]
    reference: dict[str, float] = field(default_factory=dict)
    reference_s: float = 0.0
    reference_tokens: int | None = None
    calibrations: dict[Any, Any] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        return self.loaded.model

    # -------------------------------------------------------------- methods, generically

    def method_config(self, cell: CellSpec) -> tuple[Any, Any]:
        """``(method, config)``: the cell's method object and its validated, resolved options
        (a calibrated method's default corpus is the family's own, its seed the cell's)."""
        from kscale.quant import METHODS

        method = METHODS.get(cell.method)
        config = method.configure(cell.options_dict, seed=cell.seed, own_corpus=self.family.provider)
        return method, config

    def calibration_key(self, method: Any, config: Any, cell: CellSpec) -> Any:
        """The cell's calibration config (the method's, or its format's for an imatrix), or None."""
        return method.calibration_config(config, cell.quant, own_corpus=self.family.provider)

    def calibration_for(self, method: Any, config: Any, cell: CellSpec) -> Any:
        """Calibration windows for a cell that needs them, drawn once per distinct config."""
        key = self.calibration_key(method, config, cell)
        if key is None:
            return None
        from kscale.quant.calibration import calibration_tokens

        if key not in self.calibrations:
            own = self.family.provider is not None and key.dataset == self.family.provider
            self.calibrations[key] = calibration_tokens(
                key, self.loaded.tokenizer, seqlen=self.family.seqlen, data_dir=self.plan.data_dir,
                corpus_options=dict(self.plan.provider_options) if own else None)
        return self.calibrations[key]

    def quantize(self, cell: CellSpec) -> Any:
        """Quantize the model in place for ``cell``; returns its ``BitLedger``."""
        method, config = self.method_config(cell)
        calibration = self.calibration_for(method, config, cell)
        _take_compile_seconds()  # start the cell's compile-time account at zero
        _take_kernels()  # and its record of which kernels ran
        return method.quantize(
            self.model, cell.quant, method.with_calibration(config, calibration),
            module_filter=self.family.module_filter, calibration=calibration,
            outlier_pairs=self.family.outlier_pairs, progress=False)

    def method_columns(self, cell: CellSpec) -> dict[str, Any]:
        """The method's own columns, resolved (``calib_*`` as actually drawn, ``gptq_*``, ...).
        A failed calibration is not retried here, outside the cell's error handling."""
        method, config = self.method_config(cell)
        key = self.calibration_key(method, config, cell)
        calibration = self.calibrations.get(key)
        row = method.row(method.with_calibration(config, calibration))
        if key is not None and not method.needs_calibration:  # the format's own (imatrix) windows
            row.update((calibration.config if calibration is not None else key).to_row())
        return row

    # -------------------------------------------------------------- evaluation, one path

    def evaluate(self, cell: CellSpec) -> dict[str, float]:
        """The cell's metrics: the cached 16-bit pass for the baseline, a fresh pass otherwise.
        Both come from the same suite, so they have exactly the same columns."""
        if cell.is_baseline:
            return dict(self.reference)
        from kscale.quant.runtime import runtime_quantization

        inner = bool(self.plan.progress) and _is_tty()
        # activation / KV rounding (issue 20 §1) exists only during the cell's evaluation
        with runtime_quantization(self.model, cell.runtime, module_filter=self.family.module_filter):
            return self.suite.run(self.model, progress=inner)

    def runtime_columns(self, cell: CellSpec) -> dict[str, Any]:
        """``kv_bits_per_token``: the KV cache's bits per token of context at the cell's KV
        precision (16 bit when off); None for a model type without a registered KV site. A
        total at context length C is ``total_bits + C x kv_bits_per_token`` (README)."""
        from kscale.quant.runtime import RuntimeQuantSpec, kv_bits_per_token

        kv = cell.runtime.kv if cell.runtime is not None else RuntimeQuantSpec(kind="kv")
        try:
            return {"kv_bits_per_token": kv_bits_per_token(self.model.config, kv)}
        except ValueError:
            return {"kv_bits_per_token": None}

    def cost_columns(self, cell: CellSpec, outcome: Any) -> dict[str, Any]:
        """Tokens evaluated, their rate, and the kernels' first-call compile time."""
        tokens = self.reference_tokens if cell.is_baseline else getattr(self.suite, "last_tokens", None)
        compile_s = None if cell.is_baseline else _take_compile_seconds()
        rate = tokens / outcome.eval_s if tokens and outcome.eval_s else None
        kernel = None if cell.is_baseline else _take_kernels()
        return {"eval_tokens": tokens, "eval_tok_per_s": rate, "compile_s": compile_s, "kernel": kernel}


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()


def _static_columns(plan: SweepPlan, model_spec: Any, family: Any) -> dict[str, Any]:
    """Provenance shared by every row of the job (and the toy language's entropy rate)."""
    from kscale.sweep.provenance import provenance_static

    static = dict(provenance_static(), device=str(model_spec.device),
                  revision=getattr(model_spec, "revision", None),
                  n_tokens=getattr(model_spec, "n_tokens", None))
    if family.provider:
        # a family kscale builds itself may know its irreducible loss exactly (the toy language's
        # entropy rate, nats/token): the ground truth a fitted E is checked against
        from kscale.models import PROVIDERS

        rate = getattr(PROVIDERS.get(family.provider), "entropy_rate", None)
        value = rate(plan.provider_options) if callable(rate) else None
        if value is not None:
            static["entropy_rate"] = float(value)
        # what else the build options make of the model (toy: its training precision, train_bits_*)
        columns = getattr(PROVIDERS.get(family.provider), "row_columns", None)
        if callable(columns):
            static.update(columns(plan.provider_options))
    return static


def open_job(plan: SweepPlan, model_spec: Any, *, need_reference: bool = True) -> JobContext:
    """Build (train, for toy) and load the model, prepare its suite and run the 16-bit pass."""
    from kscale.evaluate import EvalSuite, sequential_from_config
    from kscale.models import get_family, load_model, prepare_models

    family = get_family(model_spec.family)
    (model_spec,) = prepare_models([model_spec], plan.provider_options)  # toy: train if missing
    loaded = load_model(model_spec)
    suite = EvalSuite(
        list(plan.eval.specs), loaded.tokenizer, data_dir=plan.data_dir,
        cache_dir=plan.cache_dir, device=model_spec.device, seqlen_default=family.seqlen,
        source=plan.eval.source, batch_size=plan.eval.batch_size,
        # a provider family's own corpus (toy) is generated from the same options it trained on
        corpus_options={family.provider: dict(plan.provider_options)} if family.provider else None,
        # eval.target_se: cells stop once their paired dnll is known to that SE (the reference covers all)
        sequential=sequential_from_config(plan.eval.config),
    )
    ctx = JobContext(plan=plan, model_spec=model_spec, family=family, loaded=loaded, suite=suite,
                     static=_static_columns(plan, model_spec, family))
    if need_reference:
        # The 16-bit pass, once per model: the reference distributions for KL/top-1, and the
        # baseline cell's full metric set (the same columns every quantized cell gets).
        t0 = time.perf_counter()
        ctx.reference = dict(suite.set_reference(loaded.model, progress=plan.progress))
        ctx.reference_s = time.perf_counter() - t0
        ctx.reference_tokens = getattr(suite, "last_tokens", None)
        log.info("%s: 16-bit reference pass in %.1fs", job_name(model_spec), ctx.reference_s)
    ctx.static.update(eval_identity(suite, plan, family, loaded.model))
    return ctx
