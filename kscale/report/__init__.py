"""Regenerate a study's figures and ``summary.md`` from its results table.

``python -m kscale.report results/<name> [--metric nll_toy] [--law auto] [--n-bootstrap 1000] [--out DIR]``

The report is a package of sections (:mod:`kscale.report.sections`, one module each) that read
one study context (:mod:`kscale.report.context`: rows loaded once, each family with its own
metric, fits cached) and each return their markdown and figures. Per family: the Figure-1 view
with its Pareto frontier, block-size / data-type comparisons when the study varied them, the best
measured configuration per stretch of budgets, the crossovers between precisions, a comparison of
the registered laws on the held-out largest size, the chosen law's fit with bootstrap intervals and
the bootstrap probability of each precision being optimal, and, when the study has checkpoints of
one size at several training-token counts, the degradation against training tokens (``qid`` /
``ptq`` laws). Anything that cannot be done (too few points, too few sizes, a degenerate study) is
said in the summary instead of crashing; bad *input* (unknown law, metric or folder) is refused
before anything is written.
"""
from __future__ import annotations

from kscale.report.checkpoints import (
    degradation_configs,
    degradation_rows,
    final_checkpoints,
    has_token_axis,
)
from kscale.report.cli import build_parser, compare_with, main
from kscale.report.context import FamilyContext, ReportOptions, SectionOutput, StudyContext
from kscale.report.inputs import (
    AUTO_LAW,
    FALLBACK_LAW,
    ReportError,
    check_law,
    check_metric,
    choose_metric,
    load_study,
    loss_laws,
    metric_columns,
)
from kscale.report.lawscore import LawScore, compare_laws, held_out_error
from kscale.report.sections.decision import DECIDED_P, MIN_SIZES_FOR_DECISION
from kscale.report.sections.tokens import MAX_DEGRADATION_CONFIGS
from kscale.report.write import Report, write_report

__all__ = [
    "AUTO_LAW", "DECIDED_P", "FALLBACK_LAW", "MAX_DEGRADATION_CONFIGS", "MIN_SIZES_FOR_DECISION",
    "FamilyContext", "LawScore", "Report", "ReportError", "ReportOptions", "SectionOutput", "StudyContext",
    "build_parser", "check_law", "check_metric", "choose_metric", "compare_laws", "compare_with",
    "degradation_configs", "degradation_rows", "final_checkpoints", "has_token_axis", "held_out_error",
    "load_study", "loss_laws", "main", "metric_columns", "write_report",
]
