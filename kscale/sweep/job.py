"""One job = one model: load once, run every quantization cell against it, write a row per cell.

Why this shape (STYLE §2.4): loading a model costs far more than quantizing it, so the grid's
quantization axes are looped *inside* the job. The job keeps a bitwise copy of the 16-bit weights
of the tensors it quantizes (``WeightSnapshot``) and restores them after every cell, and runs
the 16-bit reference pass once (:mod:`kscale.sweep.context`). Cells whose ``key`` is already
finished in the study are skipped; if none is left the model is not even loaded.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kscale.results import ResultStore, row_key
from kscale.sweep.cell import run_cell
from kscale.sweep.context import JobContext, job_name, model_identity, open_job
from kscale.sweep.grid import CellSpec
from kscale.sweep.plan import SweepPlan
from kscale.sweep.preemption import preemption_guard
from kscale.sweep.progress import CellProgress
from kscale.sweep.provenance import git_sha, now, provenance_static
from kscale.tracking import make_tracker

log = logging.getLogger(__name__)

__all__ = ["CellErrors", "JobSummary", "cell_identity", "git_sha", "job_name", "model_identity",
           "provenance_static", "run_job", "run_plan"]


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


def cell_identity(plan: SweepPlan, model_spec: Any, cell: CellSpec) -> dict[str, Any]:
    """Everything that defines a cell's measurement; ``row_key`` of this is the row's ``key``."""
    identity = model_identity(model_spec, plan.provider_options)
    identity.update(cell.identity())
    identity.update(eval_name=plan.eval.name, eval_config=plan.eval.config_json)
    return identity


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
        with store, preemption_guard():  # SLURM's warning signal stops the job, not a cell
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


def _needs_reference(plan: SweepPlan, todo: list) -> bool:
    """The 16-bit pass is needed for the baseline cell and for any KL/top-1 metric."""
    return any(cell.is_baseline for cell, _, _ in todo) or any(
        getattr(spec, "kl", False) for spec in plan.eval.specs)


def _run_cells(plan, model_spec, todo, store, tracker, summary) -> None:
    from kscale.quant import WeightSnapshot
    from kscale.quant.formats import format_of

    ctx = open_job(plan, model_spec, need_reference=_needs_reference(plan, todo))
    name = job_name(ctx.model_spec)
    progress = CellProgress(len(todo), desc=name, enabled=plan.progress)
    try:
        # a per-tensor recipe (ftype_*) also quantizes the embeddings and the head: keep those too
        recipes = any(format_of(cell.quant).per_tensor_recipe for cell, _, _ in todo)
        with WeightSnapshot(ctx.model, ctx.family.module_filter, recipes=recipes) as snapshot:
            for cell, identity, key in todo:
                progress.start(cell.label)
                row = _run_one(ctx, cell, identity, key, snapshot)
                store.append(row)
                tracker.log_row(row, label=f"{name}/{cell.label}")
                summary.statuses[row["status"]] = summary.statuses.get(row["status"], 0) + 1
                progress.done(row, cell.label)
    finally:
        progress.close()


def _run_one(ctx: JobContext, cell: CellSpec, identity: Mapping[str, Any], key: str, snapshot) -> dict:
    """One cell through the one path: quantize (the baseline's method changes nothing), evaluate
    (the baseline's metrics are the cached 16-bit pass), restore, build the row."""
    outcome = run_cell(cell, quantize=ctx.quantize, evaluate=lambda: ctx.evaluate(cell),
                       restore=snapshot.restore, device=str(ctx.model_spec.device))
    if cell.is_baseline:
        outcome.eval_s = ctx.reference_s  # the reference pass *is* its evaluation
    return {**identity, "n_params": ctx.loaded.n_params, **ctx.static,
            **ctx.method_columns(cell), **ctx.runtime_columns(cell), **outcome.to_row(),
            **ctx.cost_columns(cell, outcome),
            "timestamp": now(), "key": key}


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
