"""When the answer is a property of the law's form rather than of the measurements.

Three checks, each a sentence the report puts next to the answer:

* **precision effect not identified**: the law's predicted spread across precisions at equal size
  (the largest measured size) has a bootstrap interval reaching values below the noise, i.e. the fit
  cannot exclude a law that does not distinguish precisions at all (``neff`` with γ → 0, ``offset``
  with vanishing offsets); the optimal k it then names (the cheapest) comes from the form. The
  precisions compared there are cells of one checkpoint scored on the same tokens, so the noise is
  the *paired* SE of their difference when the rows carry it (``dnll_<data>_se``;
  :mod:`kscale.fit.paired_noise`), else the absolute ``<metric>_se``;
* **budget-free form**: under the law (``Law.budget_free_optimum``) the optimal k at a budget cannot
  depend on the budget, so a table of budgets repeats one answer by construction;
* **size pattern in the residuals**: the in-sample residuals averaged per size run beyond
  :data:`SIZE_PATTERN` (the law's shape does not follow the measured sizes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kscale.fit.core import _target
from kscale.fit.noise import noise_of, se_column
from kscale.fit.paired_noise import NOISE_KIND_WORDS, difference_noise, paired_se_column, pairwise_paired_se
from kscale.pareto import NOISE_SE
from kscale.report.text import fmt

#: Mean in-sample log residual of one size beyond this (3 %) is a size pattern (issue 17 §1).
SIZE_PATTERN = 0.03


@dataclass(frozen=True)
class FormCheck:
    """``identified``: the precision effect is resolved; ``sentences``: what to say next to the answer."""

    identified: bool
    sentences: tuple[str, ...]
    effect: tuple[float, float, float] = (np.nan, np.nan, np.nan)  # full fit, 2.5 %, 97.5 % (metric units)
    tolerance: float = np.nan
    noise: str = ""  # which noise the tolerance is, in words


def _equal_size_frame(fit, n_params: float) -> pd.DataFrame:
    data = fit.data
    rows = []
    for k, grp in data.groupby(data["bits"].astype(float)):
        model_bpp = float((grp["total_bits"].astype(float) / grp["n_params"].astype(float)).median()) \
            if {"total_bits", "n_params"} <= set(grp.columns) else float(k)
        row = {"bits": float(k), "n_params": float(n_params), "total_bits": float(n_params) * model_bpp}
        for c in fit.law_spec.needs:
            row.setdefault(c, float(data[c].median()))
        rows.append(row)
    return pd.DataFrame(rows)


def precision_effect_interval(fit, boot, rows: pd.DataFrame, metric: str) -> tuple[float, float, float, float]:
    """(effect, lo, hi, tolerance): the law's spread across precisions at the largest measured size
    (full fit and 95 % bootstrap interval, metric units) and the noise it must exceed (2 SE of a
    difference between two cells there, :func:`effect_noise`)."""
    n = float(fit.data["n_params"].astype(float).max())
    frame = _equal_size_frame(fit, n)
    full = float(np.ptp(_target(fit.predict(frame), metric)))
    spread = np.ptp(_target(boot.predict(frame), metric), axis=1) if boot is not None else np.array([full])
    lo, hi = (float(v) for v in np.quantile(spread, [0.025, 0.975]))
    return full, lo, hi, effect_noise(fit, rows, metric)[0]


def effect_noise(fit, rows: pd.DataFrame, metric: str) -> tuple[float, str]:
    """(2 SE of a difference between two precisions at the largest fitted size, its words).

    Paired when the rows carry it: the median over pairs of cells of that checkpoint of the paired
    SE of their difference (a quantized cell against 16-bit: exact; two quantized cells: the
    conservative bound hypot(se1, se2)). Else the absolute SEs of two cells in quadrature (√2 ×
    their median); without either, the fit's own residual scale."""
    n = float(fit.data["n_params"].astype(float).max())
    at = rows[pd.to_numeric(rows["n_params"], errors="coerce") == n] if "n_params" in rows.columns else rows.iloc[:0]
    if "status" in at.columns:
        at = at[at["status"].astype(str) == "ok"]
    paired = pairwise_paired_se(at, metric)
    if np.isfinite(paired):
        return 2.0 * paired, (f"2 {NOISE_KIND_WORDS['paired']} of a difference between two precisions there, "
                              f"from `{paired_se_column(at, metric)}`; two quantized cells bounded by hypot(se1, se2)")
    se = noise_of(at, metric)
    if se is not None and np.isfinite(se).any():
        return 2.0 * np.sqrt(2.0) * float(np.nanmedian(se)), (
            f"2 {NOISE_KIND_WORDS['absolute']} of a difference (`{se_column(at, metric)}` in quadrature; "
            "the rows carry no paired SE)")
    fat = fit.data[fit.data["n_params"].astype(float) == n]
    level = float(np.median(_target(fat[metric].to_numpy(float), metric)))
    return (float(np.sqrt(np.mean(fit.residuals() ** 2))) * level,
            "the fit residual scale; the evaluation noise is unknown")


def measured_spread(fit, rows: pd.DataFrame, metric: str) -> tuple[float, float, str | None]:
    """(measured spread across precisions at the largest fitted size: best minus worst cell, the SE
    of that difference, which noise it is): what the measurements resolve where the law may not."""
    n = float(fit.data["n_params"].astype(float).max())
    at = rows[pd.to_numeric(rows["n_params"], errors="coerce") == n] if "n_params" in rows.columns else rows.iloc[:0]
    if "status" in at.columns:
        at = at[at["status"].astype(str) == "ok"]
    v = pd.to_numeric(at[metric], errors="coerce") if metric in at.columns else pd.Series(dtype=float)
    if v.notna().sum() < 2:
        return np.nan, np.nan, None
    hi_row, lo_row = at.loc[v.idxmax()], at.loc[v.idxmin()]
    se, kind = difference_noise(hi_row, lo_row, metric)
    return float(v.max() - v.min()), se, kind


def _measured_spread_words(fit, rows: pd.DataFrame, metric: str) -> str:
    spread, se, kind = measured_spread(fit, rows, metric)
    if not np.isfinite(spread):
        return ""
    text = f" Measured there, the cells span {fmt(spread)}"
    if kind is None or not np.isfinite(se):
        return text + " (evaluation noise unknown)."
    resolved = spread >= NOISE_SE * se
    return (text + f" ± {fmt(se)} ({NOISE_KIND_WORDS[kind]} of that difference): "
            + ("a precision effect the measurements resolve and the law does not pin down." if resolved else
               "within the noise, so the measurements do not resolve a precision effect either."))


def size_pattern(fit) -> tuple[float, float]:
    """(most negative, most positive) mean in-sample log residual per model size."""
    size = "n_params" if "n_params" in fit.data.columns else None
    if size is None:
        return np.nan, np.nan
    means = pd.Series(fit.residuals()).groupby(fit.data[size].to_numpy()).mean()
    return float(means.min()), float(means.max())


def form_check(fit, boot, rows: pd.DataFrame, metric: str) -> FormCheck:
    """The three checks on a fitted loss law that reads ``bits`` (see the module docstring)."""
    spec = fit.law_spec
    sentences = []
    identified = True
    effect = (np.nan, np.nan, np.nan)
    tol = np.nan
    noise = ""
    if "n_params" in fit.data.columns and "bits" in fit.data.columns:
        full, lo, hi, tol = precision_effect_interval(fit, boot, rows, metric)
        noise = effect_noise(fit, rows, metric)[1]
        effect = (full, lo, hi)
        if lo < tol:
            identified = False
            ci = boot.intervals() if boot is not None else {}
            params = [f"{name} [{fmt(a)}, {fmt(b)}]" for name, (a, b) in ci.items()
                      if any(name == p or name.startswith(f"{p}_") for p in spec.precision_params)]
            sentences.append(
                f"The precision decision is not identified: at the largest measured size the law's spread across "
                f"precisions is {fmt(full)} (95% bootstrap interval [{fmt(lo)}, {fmt(hi)}]), and that interval reaches "
                f"below {fmt(tol)} ({noise}), "
                "where the law no longer distinguishes precisions"
                + (f" ({'; '.join(params)})" if params else "")
                + "; the k it names there follows from the form (the cheapest precision wins when precision does "
                "not matter), not from the measurements." + _measured_spread_words(fit, rows, metric))
    if spec.budget_free_optimum:
        sentences.append(f"Under `{spec.name}` the optimal k cannot depend on the budget (the form fixes the "
                         "ranking of precisions at every total-bits budget), so a constant answer across budgets "
                         "is a property of the form, not a finding.")
    lo_r, hi_r = size_pattern(fit)
    if np.isfinite(lo_r) and max(abs(lo_r), abs(hi_r)) > SIZE_PATTERN:
        sentences.append(f"The in-sample residuals have a size pattern: averaged per model size they run from "
                         f"{lo_r:+.1%} to {hi_r:+.1%} (beyond ±{SIZE_PATTERN:.0%}), so the law's shape does not "
                         "follow the measured sizes and its extrapolation carries that misfit.")
    return FormCheck(identified, tuple(sentences), effect, tol, noise)


def effect_phrase(check: FormCheck) -> str:
    full, lo, hi = check.effect
    return f"{fmt(full)} [{fmt(lo)}, {fmt(hi)}]" if np.isfinite(full) else "n/a"


__all__ = ["FormCheck", "SIZE_PATTERN", "effect_noise", "effect_phrase", "form_check", "measured_spread",
           "precision_effect_interval", "size_pattern"]
