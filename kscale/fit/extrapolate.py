"""Extrapolation check: fit without the largest model size(s), predict them, report the error.

A scaling law is a claim about models nobody has measured yet, so its honest test is prediction of
the next size up (REFERENCES §4 step 4: leave-largest-out). On by default in reports.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kscale.fit.core import LawFit, _target, fit_law
from kscale.fit.degenerate import clean_points
from kscale.fit.laws import get_law

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ExtrapolationResult:
    """Held-out predictions of a fit on the smaller sizes.

    Attributes:
        fit: the fit on all but the ``n_holdout`` largest sizes.
        heldout: held-out rows with ``predicted``, ``error`` (predicted − observed) and ``rel_error`` columns.
        holdout_sizes: the ``n_params`` values held out.
    """

    fit: LawFit
    heldout: pd.DataFrame = field(repr=False)
    holdout_sizes: tuple[float, ...]

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean(np.abs(self.heldout["rel_error"])))

    @property
    def max_abs_rel_error(self) -> float:
        return float(np.max(np.abs(self.heldout["rel_error"])))

    @property
    def mean_abs_log_error(self) -> float:
        """Mean |log(predicted / observed)| of the modelled quantity: the scale-free error for targets
        spanning orders of magnitude (a degradation of 1e-5 mispredicted as 1e-4 is a 900 % relative
        error, a log error of 2.3 — and 0.1 for 0.1 mispredicted as 0.11 either way)."""
        y = self.fit.y
        obs = _target(self.heldout[y].to_numpy(dtype=float), y)
        pred = _target(self.heldout["predicted"].to_numpy(dtype=float), y)
        return float(np.mean(np.abs(np.log(pred / obs))))


def extrapolate(df: pd.DataFrame, law: str = "offset", *, y: str = "nll_wikitext2", n_holdout: int = 1,
                size_column: str = "n_params", **fit_kw) -> ExtrapolationResult:
    """Fit ``law`` on all but the ``n_holdout`` largest values of ``size_column``; predict those rows.

    Raises:
        ValueError: fewer than ``n_holdout + 1`` distinct sizes, or ``n_holdout < 1``.
        FitError: too few points left to fit.
    """
    if n_holdout < 1:
        raise ValueError(f"n_holdout must be >= 1; got {n_holdout!r}")
    if size_column not in df.columns:
        raise ValueError(f"size column {size_column!r} is not in the table")
    spec = get_law(law)
    clean, _ = clean_points(df, y, columns=spec.columns, degenerate=fit_kw.get("degenerate", "mask"), warn=False)
    sizes = np.sort(clean[size_column].astype(float).unique())
    if len(sizes) <= n_holdout:
        raise ValueError(
            f"extrapolation holds out the {n_holdout} largest {size_column} values and needs at least one "
            f"more to fit; the usable rows have {len(sizes)} distinct sizes"
        )
    held = tuple(float(s) for s in sizes[-n_holdout:])
    is_held = clean[size_column].astype(float).isin(held)
    fit = fit_law(clean[~is_held], law, y=y, warn=False, **fit_kw)
    out = clean[is_held].copy()
    if fit.law_spec.per_group:  # rows whose group was not in the training part cannot be predicted
        out = out[out[fit.law_spec.group].astype(float).isin(fit.layout.groups)]
    out["predicted"] = fit.predict(out)
    out["error"] = out["predicted"] - out[y]
    out["rel_error"] = out["error"] / out[y]
    res = ExtrapolationResult(fit=fit, heldout=out.reset_index(drop=True), holdout_sizes=held)
    log.info("extrapolation law=%s y=%s held-out %s=%s mean |rel error|=%.4f", law, y, size_column, held,
             res.mean_abs_rel_error if len(out) else float("nan"))
    return res
