"""One study, read once: the rows, each family's metric and rows, and a cache of fits.

Every section of the report reads a :class:`FamilyContext` and returns a :class:`SectionOutput`
(its markdown, figures, problems, answer sentence, table); no section appends to another's lists
and no fit is done twice (the law section's fit is the decision section's fit).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kscale import plots
from kscale.fit import DEFAULT_THRESHOLD
from kscale.fit.formats import weights_only
from kscale.report.checkpoints import final_checkpoints, has_token_axis
from kscale.report.inputs import AUTO_LAW, ReportError, check_law, choose_metric, check_metric, metric_columns


@dataclass(frozen=True)
class ReportOptions:
    """What the user asked for (validated: a bad value is a :class:`ReportError` before any work).

    ``metric`` None = each family's own default metric (:func:`choose_metric` on its rows), so a study
    holding a toy ladder and a real family fits each on its own eval.
    """

    metric: str | None = None
    law: str = AUTO_LAW
    n_bootstrap: int = 1000
    seed: int = 0
    known_E: float | None = None
    budgets: tuple[float, ...] | None = None
    n_holdout: int = 1
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        check_law(self.law)
        if self.n_bootstrap < 0:
            raise ReportError(f"n_bootstrap must be >= 0; got {self.n_bootstrap}")
        if self.n_holdout < 0:
            raise ReportError(f"n_holdout must be >= 0; got {self.n_holdout}")
        if not (self.threshold > 0 and math.isfinite(self.threshold)):
            raise ReportError(f"threshold must be a positive number of nats; got {self.threshold}")
        if self.budgets is not None and any(not b > 0 for b in self.budgets):
            raise ReportError(f"budgets must be positive total bits; got {list(self.budgets)}")


@dataclass
class SectionOutput:
    """What one section adds to the report."""

    markdown: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    answer: str | None = None
    table: pd.DataFrame | None = None


def _n_sizes(df: pd.DataFrame) -> int:
    col = "n_params" if "n_params" in df.columns else "size"
    return int(df[col].nunique()) if col in df.columns else 0


class FamilyContext:
    """One family of a study: its rows, its metric and the fits the sections share.

    Attributes:
        family: the family name (``toy``, ``opt`` ...); ``tag``: its file-name prefix.
        rows: all of the family's rows; ``weight_rows``: ``law_rows`` with act_bits = kv_bits = 16 (what
            the loss laws are fitted to); ``law_rows``: each size's last checkpoint (= ``rows``
            without a training-token axis), what the size laws and the frontier read.
        metric: the column analysed for this family.
        known_E: the exact irreducible loss in the metric's units, when known (toy entropy rate).
    """

    def __init__(self, study: "StudyContext", family: str, rows: pd.DataFrame, metric: str):
        self.study = study
        self.options = study.options
        self.family = family
        self.tag = family.replace("/", "_")
        self.rows = rows.reset_index(drop=True)
        self.token_axis = has_token_axis(self.rows)
        self.law_rows = final_checkpoints(self.rows) if self.token_axis else self.rows
        # the weight law is fitted on weights-only cells: a W4A8 cell shares a W4 cell's weight bits
        # but not its loss, and a law over both would read activation error as a weight effect
        self.weight_rows = weights_only(self.law_rows)
        self.n_runtime_rows = len(self.law_rows) - len(self.weight_rows)
        self.metric = metric
        self.n_sizes = _n_sizes(self.law_rows[self.law_rows["status"].astype(str) == "ok"]
                                if "status" in self.law_rows.columns else self.law_rows)
        self.known_E = self.options.known_E
        if self.known_E is None and "entropy_rate" in self.rows.columns and metric.startswith("nll_"):
            er = pd.to_numeric(self.rows["entropy_rate"], errors="coerce").dropna()
            self.known_E = float(er.iloc[0]) if len(er) else None
        self._cache: dict[Any, Any] = {}

    @property
    def fig_dir(self) -> Path:
        return self.study.out_dir / "figures"

    def cached(self, key, make: Callable[[], Any]):
        """``make()`` once per key (fits, bootstraps, law comparisons), shared by the sections."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def save(self, out: SectionOutput, fig, name: str) -> None:
        """Save ``fig`` as ``figures/<tag>-<name>.{png,pdf}`` and list it in ``out``."""
        out.figures += plots.save_figure(fig, self.fig_dir, f"{self.tag}-{name}")


class StudyContext:
    """The study: rows loaded once (by the caller or here), options, output folder, families."""

    def __init__(self, study_dir: str | Path, df: pd.DataFrame, options: ReportOptions,
                 out_dir: str | Path | None = None):
        if df.empty:
            raise ReportError(f"the results table of {study_dir} is empty")
        self.study_dir = Path(study_dir)
        self.df = df
        self.options = options
        self.out_dir = Path(out_dir) if out_dir is not None else self.study_dir
        if options.metric is not None:
            check_metric(df, options.metric)
        self.skipped: list[str] = []
        self.laws_used: dict[str, str] = {}
        self.families = self._families()

    def _families(self) -> list[FamilyContext]:
        names = sorted(self.df["family"].astype(str).unique()) if "family" in self.df.columns else ["all"]
        out = []
        for fam in names:
            rows = self.df[self.df["family"].astype(str) == fam] if "family" in self.df.columns else self.df
            if self.options.metric is not None:
                if self.options.metric not in metric_columns(rows):
                    self.skipped.append(f"{fam}: no values of `{self.options.metric}` (its rows measure "
                                        f"{', '.join(metric_columns(rows)) or 'nothing'}); not analysed")
                    continue
                metric = self.options.metric
            else:
                try:
                    metric = choose_metric(rows)
                except ReportError as e:
                    self.skipped.append(f"{fam}: {e}")
                    continue
            out.append(FamilyContext(self, fam, rows, metric))
        if not out:
            raise ReportError("no family of the study has a metric to analyse: " + "; ".join(self.skipped))
        return out

    @property
    def metrics(self) -> dict[str, str]:
        return {f.family: f.metric for f in self.families}


@dataclass(frozen=True)
class FitOutcome:
    """A cached fit and its bootstrap; ``error`` says why the fit failed, ``boot_error`` why the
    bootstrap did (then ``boot`` is None)."""

    fit: Any = None
    boot: Any = None
    error: str = ""
    boot_error: str = ""


def fit_and_bootstrap(ctx: FamilyContext, rows: pd.DataFrame, law: str, y: str, key: str) -> FitOutcome:
    """Fit ``law`` to ``rows`` (named ``key`` in the cache) and bootstrap it if asked; once per study."""
    import numpy as np

    from kscale.fit import FitError, bootstrap_law, fit_law

    def make() -> FitOutcome:
        try:
            fit = fit_law(rows, law, y=y)
        except (FitError, ValueError) as e:
            return FitOutcome(error=str(e))
        if ctx.options.n_bootstrap <= 0:
            return FitOutcome(fit=fit)
        try:
            return FitOutcome(fit=fit, boot=bootstrap_law(fit, n_resamples=ctx.options.n_bootstrap, seed=ctx.options.seed))
        except (ValueError, np.linalg.LinAlgError) as e:
            return FitOutcome(fit=fit, boot_error=str(e))

    return ctx.cached(("fit", key, law, y), make)
