"""What the report may be asked for, checked before anything is written.

The study folder, the metric and the law are user input: each is validated here with a one-line
:class:`ReportError` (did-you-mean on typos), so a bad command line costs a second, not a half-written
study folder.
"""
from __future__ import annotations

import pandas as pd

from kscale.fit import LAWS
from kscale.registry import UnknownNameError, did_you_mean

_METRIC_PREFERENCE = ("nll", "ppl", "bpb", "kl", "acc")
_METRIC_KINDS = ("nll", "ppl", "bpb", "kl", "acc", "top1", "dnll")
#: Metrics that are already a paired difference against the same model's 16-bit row (issue 19 §3):
#: the degradation laws fit them directly, the loss laws cannot (they model a loss with a floor E > 0).
DEGRADATION_KINDS = ("dnll", "kl")
#: ``--law auto``: pick the registered loss law that best predicts the held-out largest size.
AUTO_LAW = "auto"
#: Used by ``auto`` when no held-out comparison is possible (too few sizes).
FALLBACK_LAW = "offset"


class ReportError(ValueError):
    """Bad input to the report (unknown law or metric, missing study): nothing was written."""


def load_study(study_dir) -> pd.DataFrame:
    """The study's results table (``kscale.results.load_results``).

    Raises:
        ReportError: the folder does not exist or holds no result rows.
    """
    from pathlib import Path

    from kscale.results import load_results

    study_dir = Path(study_dir)
    if not study_dir.exists():
        raise ReportError(f"study folder {str(study_dir)!r} does not exist")
    df = load_results(study_dir)
    if df.empty:
        raise ReportError(f"no result rows under {study_dir} (looked for rows/*.jsonl and *.jsonl)")
    return df


def _has_values(df: pd.DataFrame, column: str) -> bool:
    return bool(pd.to_numeric(df[column], errors="coerce").notna().any())


#: Column endings that are not a metric to fit: standard errors, and the per-token distribution
#: summaries of ``kl_<data>`` (median, percentiles, max, the top-k tail bound), the subset values
#: an early-stopped cell's paired estimate replaced (:func:`kscale.fit.paired_noise.use_paired_estimates`).
NOT_METRIC_SUFFIXES = ("_stderr", "_se", "_median", "_p90", "_p99", "_max", "_tail", "_subset")


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Columns holding a metric (``nll_*``, ``ppl_*``, ``bpb_*``, ``kl_*``, ``dnll_*``, ``acc_*``,
    ``top1_*``) with values; standard errors and distribution summaries (:data:`NOT_METRIC_SUFFIXES`)
    are not metrics."""
    return [c for c in df.columns if c.split("_", 1)[0] in _METRIC_KINDS and "_" in c
            and not c.endswith(NOT_METRIC_SUFFIXES) and _has_values(df, c)]


def choose_metric(df: pd.DataFrame) -> str:
    """Prefer ``nll_*`` of the first perplexity dataset, then ppl/bpb/kl, then accuracy."""
    for kind in _METRIC_PREFERENCE:
        cols = [c for c in metric_columns(df) if c.startswith(f"{kind}_")]
        if kind == "acc" and "acc_mean" in cols:
            return "acc_mean"
        if cols:
            return cols[0]
    raise ReportError(f"no metric column (nll_*, ppl_*, bpb_*, kl_*, acc_*) in the results table; columns: {sorted(df.columns)}")


def check_metric(df: pd.DataFrame, metric: str) -> None:
    """Raise :class:`ReportError` unless ``metric`` is a metric column with values."""
    available = metric_columns(df)
    if metric in available:
        return
    why = "has no finite values" if metric in df.columns else "is not in the results table"
    raise ReportError(f"metric {metric!r} {why}.{did_you_mean(metric, available)} "
                      f"Metrics in this study: {', '.join(available) or 'none'}")


def is_degradation_metric(metric: str) -> bool:
    """``dnll_<data>`` / ``kl_<data>``: a paired difference to the 16-bit model, zero at 16 bit."""
    return metric.split("_", 1)[0] in DEGRADATION_KINDS


def loss_laws() -> list[str]:
    return [n for n, law in LAWS.items() if law.kind == "loss"]


def check_law(name: str) -> None:
    """Raise unless ``name`` is ``auto`` or a registered *loss* law (did-you-mean on typos)."""
    if name == AUTO_LAW:
        return
    try:
        spec = LAWS.get(name)
    except UnknownNameError as e:
        raise ReportError(f"{e} (or {AUTO_LAW!r}: the law that best predicts the held-out largest size)") from None
    if spec.kind != "loss":
        raise ReportError(f"law {name!r} models {spec.kind} (delta_<metric>, dnll_*, kl_*), not the metric itself; "
                          f"the report fits it in the degradation section. Loss laws: {', '.join(loss_laws())}")
