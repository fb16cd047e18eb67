"""Figures from results tables and fits (matplotlib; DataFrames in, Figures out).

* :func:`plot_bits_scaling` — the k-bit paper's Figure 1: metric vs total model bits (log x),
  one line per precision k, drawn as linear interpolations like the paper (§4), frontier marked.
* :func:`plot_ablation` — block-size or data-type comparison at one precision (paper Fig. 3, App. C).
* :func:`plot_fit` — data with fitted curves per precision and bootstrap bands.
* :func:`plot_residuals` — log residuals vs total bits, coloured by precision.
* :func:`plot_extrapolation` — held-out largest size: predicted vs observed.
* :func:`save_figure` — PNG + PDF under ``<study_dir>/figures/``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # headless: never try to open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kscale.fit.bootstrap import BootstrapResult  # noqa: E402
from kscale.fit.core import LawFit, _group_label  # noqa: E402
from kscale.fit.extrapolate import ExtrapolationResult  # noqa: E402
from kscale.pareto import _usable, pareto_frontier  # noqa: E402

log = logging.getLogger(__name__)

_UNITS = {"nll": "nats/token", "ppl": "perplexity", "bpb": "bits/byte", "kl": "nats/token", "acc": "accuracy"}


def metric_label(metric: str) -> str:
    """``nll_wikitext2`` → ``nll on wikitext2 (nats/token)``."""
    kind, _, ds = metric.partition("_")
    unit = _UNITS.get(kind)
    name = f"{kind} on {ds}" if ds and ds != "mean" else metric.replace("_", " ")
    return f"{name} ({unit})" if unit else name


def _bits_colors(values) -> dict:
    vals = sorted({float(v) for v in values})
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(1, len(vals) - 1)) for i, v in enumerate(vals)}


def _bits_name(k: float) -> str:
    return f"{_group_label(k)}-bit" + (" (16-bit baseline)" if float(k) == 16 else "")


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Save ``fig`` as ``out_dir/name.png`` and ``.pdf``; close it; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=150, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def plot_bits_scaling(df: pd.DataFrame, metric: str, *, title: str | None = None, frontier: bool = True,
                      known_E: float | None = None):
    """Metric vs total model bits, one line per ``bits`` (best row per size), frontier marked.

    ``known_E``: the irreducible loss when it is known exactly (the toy language's entropy rate,
    in the metric's units), drawn as a horizontal line: no model, at any precision, can go below.
    """
    from kscale.pareto import precision_curve

    data = _usable(df, metric, "total_bits")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = _bits_colors(data["bits"]) if len(data) else {}
    for k, col in colors.items():
        cur = precision_curve(data, metric, k)
        ax.plot(cur["total_bits"], cur[metric], "o-", color=col, label=_bits_name(k), ms=4)
    if frontier and len(data):
        fr = pareto_frontier(data, metric)
        ax.plot(fr["total_bits"], fr[metric], "k--", lw=1, alpha=0.7, label="Pareto frontier")
        ax.scatter(fr["total_bits"], fr[metric], s=60, facecolors="none", edgecolors="k", zorder=3)
    if known_E is not None:
        ax.axhline(known_E, color="0.4", ls=":", lw=1.2, label=f"entropy rate (irreducible) = {known_E:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("total model bits (log scale)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title or "k-bit scaling: metric vs total model bits")
    ax.grid(True, which="both", alpha=0.3)
    if colors:
        ax.legend(fontsize=8)
    return fig


def plot_ablation(df: pd.DataFrame, metric: str, column: str, *, bits: float = 4, title: str | None = None):
    """One line per value of ``column`` (``blocksize`` or ``dtype``) at ``bits``, vs total model bits."""
    if column not in df.columns:
        raise ValueError(f"ablation column {column!r} is not in the results table")
    data = _usable(df, metric, "total_bits")
    data = data[data["bits"].astype(float) == float(bits)]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    vals = sorted(data[column].dropna().unique(), key=lambda v: (str(type(v)), v))
    cmap = plt.get_cmap("tab10")
    for i, v in enumerate(vals):
        sub = data[data[column] == v]
        sub = sub.loc[sub.assign(_s=sub[metric]).groupby("n_params")["_s"].idxmin()] if "n_params" in sub else sub
        sub = sub.sort_values("total_bits")
        ax.plot(sub["total_bits"], sub[metric], "o-", color=cmap(i % 10), ms=4, label=f"{column}={v}")
    ax.set_xscale("log")
    ax.set_xlabel("total model bits (log scale)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title or f"{_group_label(bits)}-bit: {column} comparison")
    ax.grid(True, which="both", alpha=0.3)
    if vals:
        ax.legend(fontsize=8)
    return fig


def _curve_frame(fit: LawFit, k: float | None, grid: np.ndarray) -> pd.DataFrame:
    """Rows along total bits for precision ``k`` with the columns the law reads."""
    data = fit.data
    sub = data if k is None else data[data["bits"].astype(float) == k]
    bpp = float(sub["bits_per_param"].median()) if "bits_per_param" in sub else (k or 16.0)
    frame = pd.DataFrame({"total_bits": grid, "n_params": grid / bpp, "bits_per_param": bpp})
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
        frame = _curve_frame(fit, k, grid)
        ax.plot(grid, fit.predict(frame), color=col, label=_bits_name(k) if k is not None else fit.law)
        if boot is not None:
            lo, hi = boot.prediction_band(frame, level)
            ax.fill_between(grid, lo, hi, color=col, alpha=0.2, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("total model bits (log scale)")
    ax.set_ylabel(metric_label(fit.y))
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
        ax.legend(fontsize=8)
    else:
        ax.scatter(data[xcol], res, s=18)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"{xcol.replace('_', ' ')} (log scale)")
    ax.set_ylabel("log residual: log(observed / predicted)")
    ax.set_title(title or f"law '{fit.law}' residuals", fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig


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
