"""One job = one model: load once, run every quantization cell against it, write a row per cell.

Why this shape (STYLE §2.4): loading a model costs far more than quantizing it, so the grid's
quantization axes are looped *inside* the job. The job keeps a bitwise copy of the 16-bit weights
of the tensors it quantizes (``WeightSnapshot``) and restores them after every cell, and computes
the 16-bit reference logits for the KL metric once. Cells whose ``key`` is already finished in
the study are skipped; if none is left the model is not even loaded.
"""
from __future__ import annotations

import logging
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from kscale.results import ResultStore, row_key
from kscale.sweep.cell import run_cell
from kscale.sweep.grid import SEEDED_METHODS, CellSpec
from kscale.sweep.plan import SweepPlan
from kscale.sweep.progress import CellProgress
from kscale.tracking import make_tracker

log = logging.getLogger(__name__)


class CellErrors(RuntimeError):
    """Some cells of a job raised unexpected exceptions (recorded as ``status="error"`` rows)."""


@dataclass
class JobSummary:
    """What a job did; the Hydra task returns it (picklable, for joblib/submitit)."""

    job: str
    n_cells: int
    n_skipped: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rows_path: str | None = None


@lru_cache(maxsize=1)
def provenance_static() -> dict[str, Any]:
    """Versions and host: the same for every row of a process, computed once."""
    import kscale

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = None
    return {
        "kscale_version": kscale.__version__,
        "git_sha": git_sha(),
        "torch_version": torch_version,
        "transformers_version": transformers_version,
        "hostname": socket.gethostname(),
        "python_version": platform.python_version(),
    }


def git_sha() -> str | None:
    """The project's commit (with ``-dirty`` if the tree has changes), or None outside git."""
    from kscale.paths import PROJECT_ROOT

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def model_identity(model_spec: Any, provider_options: Mapping[str, Any]) -> dict[str, Any]:
    """The model's part of the identity. Provider-built checkpoints (toy) add their build options,
    because a different training budget is a different model under the same size label."""
    import json

    from kscale.models import get_family

    fam = get_family(model_spec.family)
    options = dict(provider_options) if fam.provider else {}
    return {
        "family": model_spec.family,
        "size": model_spec.size,
        "checkpoint": model_spec.checkpoint,
        "model_dtype": model_spec.dtype,
        "model_options": json.dumps(options, sort_keys=True, separators=(",", ":"), default=str),
    }


def cell_identity(plan: SweepPlan, model_spec: Any, cell: CellSpec) -> dict[str, Any]:
    """Everything that defines a cell's measurement; ``row_key`` of this is the row's ``key``."""
    identity = model_identity(model_spec, plan.provider_options)
    identity.update(cell.identity())
    identity.update(eval_name=plan.eval.name, eval_config=plan.eval.config_json)
    return identity


def job_name(model_spec: Any) -> str:
    return f"{model_spec.family}-{model_spec.size}"


def _method_options(cell: CellSpec) -> dict[str, Any]:
    options = cell.options_dict
    if cell.method in SEEDED_METHODS:
        options["seed"] = cell.seed
    return options


def run_job(plan: SweepPlan, model_spec: Any) -> JobSummary:
    """Run every cell of ``plan`` against one model and append a row per cell.

    Raises:
        CellErrors: after all cells ran, if any cell raised an unexpected exception.
        Exception: loading or reference evaluation failures (real errors) propagate.
    """
    name = job_name(model_spec)
    keyed = [(cell, cell_identity(plan, model_spec, cell)) for cell in plan.cells]
    keyed = [(cell, ident, row_key(ident)) for cell, ident in keyed]
    store = ResultStore(plan.study_dir, name)
    done = set() if plan.rerun else store.finished_keys()
    todo = [(c, i, k) for c, i, k in keyed if k not in done]
    summary = JobSummary(job=name, n_cells=len(keyed), n_skipped=len(keyed) - len(todo))
    if not todo:
        log.info("%s: all %d cells finished already (rerun=true to redo); not loading the model",
                 name, len(keyed))
        return summary
    log.info("%s: %d cells to run, %d already finished", name, len(todo), summary.n_skipped)

    tracker = make_tracker(plan.tracking, group=plan.name, name=name, config=plan.config)
    failed = True
    try:
        with store:
            _run_cells(plan, model_spec, todo, store, tracker, summary)
        failed = False
    finally:
        tracker.finish(failed=failed)
    summary.rows_path = str(store.path) if store.path.exists() else None
    if summary.statuses.get("error"):
        raise CellErrors(
            f"{name}: {summary.statuses['error']} of {len(todo)} cells raised unexpected errors "
            f"(rows with status=error in {store.path}; see the log above for tracebacks)"
        )
    return summary


def _run_cells(plan, model_spec, todo, store, tracker, summary) -> None:
    from kscale.evaluate import EvalSuite
    from kscale.models import get_family, load_model, prepare_models
    from kscale.quant import WeightSnapshot, apply_method, ledger_for

    family = get_family(model_spec.family)
    (model_spec,) = prepare_models([model_spec], plan.provider_options)  # toy: train if missing
    loaded = load_model(model_spec)
    model = loaded.model
    suite = EvalSuite(
        list(plan.eval.specs), loaded.tokenizer, data_dir=plan.data_dir,
        cache_dir=plan.cache_dir, device=model_spec.device, seqlen_default=family.seqlen,
        source=plan.eval.source, batch_size=plan.eval.batch_size,
        # a provider family's own corpus (toy) is generated from the same options it trained on
        corpus_options={family.provider: dict(plan.provider_options)} if family.provider else None,
    )
    eval_identity = {k if k.startswith("eval_") else f"eval_{k}": v
                     for k, v in suite.identity().items()}
    eval_identity["eval_batch_size"] = plan.eval.batch_size
    # which tensors are quantized and how the rest is counted: explicit in every row
    mf = family.module_filter
    eval_identity["quant_scope"] = (f"nn.Linear+Conv1D include={','.join(mf.include)} "
                                    f"exclude={','.join(mf.exclude)}; other params counted at 16 bit")
    # The 16-bit pass, once per model: reference distributions for KL/top-1, and the baseline's
    # own metrics (so the 16-bit cell needs no second evaluation pass).
    t0 = time.perf_counter()
    reference = dict(suite.set_reference(model, progress=plan.progress))
    reference_s = time.perf_counter() - t0
    log.info("%s: 16-bit reference pass in %.1fs", job_name(model_spec), reference_s)
    static = dict(provenance_static(), device=str(model_spec.device))
    if family.provider:
        # a family kscale builds itself may know its irreducible loss exactly (the toy language's
        # entropy rate, nats/token): the ground truth a fitted E is checked against
        from kscale.models import PROVIDERS

        rate = getattr(PROVIDERS.get(family.provider), "entropy_rate", None)
        value = rate(plan.provider_options) if callable(rate) else None
        if value is not None:
            static["entropy_rate"] = float(value)

    calibrations: dict[Any, Any] = {}

    def gptq_options(cell: CellSpec) -> dict[str, Any]:
        """The cell's GPTQ options with the calibration corpus resolved: ``dataset: null``
        means the family's own (the toy language for ``toy``), else CalibrationConfig's default
        (WikiText-2)."""
        options = _method_options(cell)
        if options.get("dataset") is None:
            options.pop("dataset", None)
            if family.provider:
                options["dataset"] = family.provider
        return options

    def calibration_for(cell: CellSpec):
        """GPTQ's calibration windows, tokenized once per (dataset, nsamples, seqlen, seed)."""
        if cell.method not in SEEDED_METHODS:
            return None
        from kscale.quant.calibration import calibration_tokens
        from kscale.quant.gptq import GPTQConfig

        config = GPTQConfig.from_options(gptq_options(cell)).calibration
        if config not in calibrations:
            own = family.provider is not None and config.dataset == family.provider
            calibrations[config] = calibration_tokens(
                config, loaded.tokenizer, seqlen=family.seqlen, data_dir=plan.data_dir,
                corpus_options=dict(plan.provider_options) if own else None)
        return calibrations[config]

    def method_columns(cell: CellSpec) -> dict[str, Any]:
        """Resolved calibration/GPTQ settings (``calib_*``, ``gptq_*``) for the row."""
        if cell.is_baseline or cell.method not in SEEDED_METHODS:
            return {}
        from dataclasses import replace

        from kscale.quant.gptq import GPTQConfig

        config = GPTQConfig.from_options(gptq_options(cell))
        # the resolved settings (seqlen) of the windows quantize() drew; none if that failed, and
        # a failed calibration must not be retried here, outside run_cell's error handling
        cal = calibrations.get(config.calibration)
        return replace(config, calibration=cal.config if cal is not None else config.calibration).to_row()

    def quantize(cell: CellSpec):
        if cell.is_baseline:
            return ledger_for(model, cell.quant, family.module_filter)
        options = gptq_options(cell) if cell.method in SEEDED_METHODS else _method_options(cell)
        options.setdefault("progress", False)  # the sweep's own bar is over cells
        if cell.quant.outlier_frac > 0:
            options["outlier_pairs"] = family.outlier_pairs
        return apply_method(cell.method, model, cell.quant, module_filter=family.module_filter,
                            calibration=calibration_for(cell), options=options)

    progress = CellProgress(len(todo), desc=job_name(model_spec), enabled=plan.progress)
    inner_bars = bool(plan.progress) and sys.stderr.isatty()
    try:
        with WeightSnapshot(model, family.module_filter) as snapshot:
            for cell, identity, key in todo:
                progress.start(cell.label)
                if cell.is_baseline:
                    evaluate = reference.copy
                else:
                    # per-window bars inside a cell only on a terminal, where tqdm redraws them in
                    # place; in a log file the bar over cells and its one line per cell suffice
                    evaluate = lambda: suite.run(model, progress=inner_bars)  # noqa: E731
                outcome = run_cell(cell, quantize=quantize, evaluate=evaluate,
                                   restore=snapshot.restore, device=str(model_spec.device))
                if cell.is_baseline:
                    outcome.eval_s = reference_s  # the reference pass *is* its evaluation
                row = {**identity, "n_params": loaded.n_params, **eval_identity,
                       **method_columns(cell), **outcome.to_row(), **static,
                       "timestamp": _now(), "key": key}
                store.append(row)
                tracker.log_row(row, label=f"{job_name(model_spec)}/{cell.label}")
                summary.statuses[outcome.status] = summary.statuses.get(outcome.status, 0) + 1
                progress.done(row, cell.label)
    finally:
        progress.close()


def run_plan(plan: SweepPlan) -> list[JobSummary]:
    """Run every model of ``plan`` in this process, one job after another (no launcher)."""
    summaries = []
    errors: list[Exception] = []
    for spec in plan.models:
        try:
            summaries.append(run_job(plan, spec))
        except CellErrors as err:
            errors.append(err)
    if errors:
        raise CellErrors("; ".join(str(e) for e in errors))
    return summaries
