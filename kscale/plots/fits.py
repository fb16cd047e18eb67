"""Figures of a fitted law: curves with bootstrap bands, residuals, the held-out extrapolation."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kscale.fit.bootstrap import BootstrapResult
from kscale.fit.core import LawFit
from kscale.fit.extrapolate import ExtrapolationResult
from kscale.fit.noise import se_column
from kscale.plots.style import _bits_colors, _bits_name, error_bars, log_axis, metric_label


def _curve_frame(fit: LawFit, k: float | None, grid: np.ndarray) -> pd.DataFrame:
    """Rows along total bits for precision ``k`` with the columns the law reads."""
    data = fit.data
    sub = data if k is None else data[data["bits"].astype(float) == k]
    bpp = float(sub["bits_per_param"].median()) if "bits_per_param" in sub else (k or 16.0)
    # total bits per *model* parameter (16-bit embeddings and head included), as candidate_frame
    # does: bits_per_param is per quantized weight and would misplace laws that read n_params
    model_bpp = (float((sub["total_bits"].astype(float) / sub["n_params"].astype(float)).median())
                 if {"total_bits", "n_params"} <= set(sub.columns) else bpp)
    frame = pd.DataFrame({"total_bits": grid, "n_params": grid / model_bpp, "bits_per_param": bpp})
    if k is not None:
        frame["bits"] = k
    for c in fit.law_spec.needs:
        if c not in frame:
            frame[c] = float(sub[c].median())
    return frame


def plot_fit(fit: LawFit, boot: BootstrapResult | None = None, *, level: float = 0.95, title: str | None = None):
    """Observed points and the fitted law per precision, with bootstrap percentile bands."""
    data = fit.data
    if "total_bits" not in data.columns:
        raise ValueError("plot_fit draws curves along total_bits; the fitted rows have no total_bits column")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    t = data["total_bits"].astype(float)
    grid = np.geomspace(t.min() / 1.5, t.max() * 1.5, 100)
    ks = sorted(data["bits"].astype(float).unique()) if "bits" in data.columns else [None]
    colors = _bits_colors(ks) if ks != [None] else {None: "C0"}
    for k in ks:
        col = colors[k]
        sub = data if k is None else data[data["bits"].astype(float) == k]
        ax.scatter(sub["total_bits"], sub[fit.y], color=col, s=18, zorder=3)
        error_bars(ax, sub, sub["total_bits"], fit.y, color=col)
        frame = _curve_frame(fit, k, grid)
        ax.plot(grid, fit.predict(frame), color=col, label=_bits_name(k) if k is not None else fit.law)
        if boot is not None:
            lo, hi = boot.prediction_band(frame, level)
            ax.fill_between(grid, lo, hi, color=col, alpha=0.2, lw=0)
    log_axis(ax)
    ax.set_xlabel("total model bits (log scale)")
    ax.set_ylabel(metric_label(fit.y))
    if fit.floors:
        fl = next(iter(fit.floors.values()))
        ax.axhline(fl, color="0.4", ls=":", lw=1.2, label=f"floor: entropy rate = {fl:.3f}")
    band = f", {level:.0%} bootstrap bands (n={boot.n_resamples})" if boot is not None else ""
    ax.set_title(title or f"law '{fit.law}' fit{band}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_residuals(fit: LawFit, *, title: str | None = None):
    """log(observed) − log(predicted) per fitted row vs total bits (or n_params), by precision."""
    data = fit.data
    xcol = "total_bits" if "total_bits" in data.columns else fit.law_spec.columns[0]
    res = fit.residuals()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if "bits" in data.columns:
        colors = _bits_colors(data["bits"])
        for k, col in colors.items():
            m = data["bits"].astype(float).to_numpy() == k
            ax.scatter(data.loc[m, xcol], res[m], color=col, s=18, label=_bits_name(k))
            _residual_bars(ax, fit, m, res, col)
        ax.legend(fontsize=8)
    else:
        ax.scatter(data[xcol], res, s=18)
    ax.axhline(0, color="k", lw=0.8)
    log_axis(ax)
    ax.set_xlabel(f"{xcol.replace('_', ' ')} (log scale)")
    ax.set_ylabel("log residual: log(observed / predicted)")
    ax.set_title(title or f"law '{fit.law}' residuals", fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig


def _residual_bars(ax, fit: LawFit, mask: np.ndarray, res: np.ndarray, color) -> None:
    """Each point's evaluation SE in log-residual units (SE / value), when the rows carry it."""
    rows = fit.data.loc[mask]
    col = se_column(rows, fit.y)
    if col is None:
        return
    rel = pd.to_numeric(rows[col], errors="coerce").to_numpy(float) / np.abs(rows[fit.y].to_numpy(float))
    xcol = "total_bits" if "total_bits" in rows.columns else fit.law_spec.columns[0]
    ax.errorbar(rows[xcol], res[mask], yerr=rel, fmt="none", ecolor=color, capsize=2, elinewidth=1.0, alpha=0.8)


def plot_extrapolation(ext: ExtrapolationResult, *, title: str | None = None):
    """Predicted vs observed for the held-out largest size(s), one point per row, y = x line."""
    h = ext.heldout
    y = ext.fit.y
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    if len(h):
        colors = _bits_colors(h["bits"]) if "bits" in h.columns else None
        for i, row in h.iterrows():
            c = colors[float(row["bits"])] if colors else "C0"
            ax.scatter(row[y], row["predicted"], color=c, s=30)
            error_bars(ax, h.loc[[i]], [row["predicted"]], y, color=c, horizontal=True)
        if colors:
            for k, c in colors.items():
                ax.scatter([], [], color=c, label=_bits_name(k))
            ax.legend(fontsize=8)
        lo = float(min(h[y].min(), h["predicted"].min()))
        hi = float(max(h[y].max(), h["predicted"].max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
    ax.set_xlabel(f"observed {metric_label(y)}")
    ax.set_ylabel(f"predicted {metric_label(y)}")
    sizes = ", ".join(f"{s:.3g}" for s in ext.holdout_sizes)
    err = f"mean |rel. error| = {ext.mean_abs_rel_error:.2%}" if len(h) else "no held-out rows"
    ax.set_title(title or f"extrapolation to n_params = {sizes}\n{err}", fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig
