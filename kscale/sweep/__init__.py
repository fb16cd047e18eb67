"""Sweeps: grid expansion, one job per model, cells inside, rows to a crash-safe store.

Public API (no Hydra needed; ``kscale.config.build_plan`` makes plans from configs):
    CellSpec, expand_cells, QUANT_AXES        the quantization grid of a job
    SweepPlan, EvalPlan, TrackingSpec         frozen plan
    run_job(plan, model_spec), run_plan(plan) run cells, append rows (resume by key)
    pending_models(plan)                      models with unfinished cells
    finish_study(study_dir)                   merged table + report
"""
from __future__ import annotations

from kscale.sweep.finish import StudySummary, finish_study
from kscale.sweep.grid import QUANT_AXES, CellSpec, expand_cells
from kscale.sweep.job import CellErrors, JobSummary, cell_identity, run_job, run_plan
from kscale.sweep.plan import EvalPlan, SweepPlan, TrackingSpec


def pending_models(plan: SweepPlan) -> list:
    """The models of ``plan`` with at least one cell whose key is not finished (all if rerun)."""
    from kscale.results import ResultStore, row_key

    if plan.rerun:
        return list(plan.models)
    done = ResultStore(plan.study_dir).finished_keys()
    return [spec for spec in plan.models
            if any(row_key(cell_identity(plan, spec, c)) not in done for c in plan.cells)]


__all__ = [
    "QUANT_AXES", "CellSpec", "expand_cells", "SweepPlan", "EvalPlan", "TrackingSpec",
    "run_job", "run_plan", "pending_models", "finish_study", "StudySummary", "CellErrors",
    "JobSummary", "cell_identity",
]
