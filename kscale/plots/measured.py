"""Figures of measured rows: the Figure-1 view, ablations, differences between configurations."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kscale.fit.noise import se_column
from kscale.pareto import _usable, pareto_frontier, precision_curve
from kscale.plots.style import (_LINESTYLES, _MARKERS, _better_sign, _bits_colors, _bits_name, _group_label,
                                _panel_legend, error_bars, log_axis, metric_label)


def plot_bits_scaling(df: pd.DataFrame, metric: str, *, title: str | None = None, frontier: bool = True,
                      known_E: float | None = None):
    """Metric vs total model bits, one line per ``bits`` (best row per size), frontier marked.

    ``known_E``: the irreducible loss when it is known exactly (the toy language's entropy rate,
    in the metric's units), drawn as a horizontal line: no model, at any precision, can go below.
    """
    data = _usable(df, metric, "total_bits")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = _bits_colors(data["bits"]) if len(data) else {}
    for k, col in colors.items():
        cur = precision_curve(data, metric, k)
        ax.plot(cur["total_bits"], cur[metric], "o-", color=col, label=_bits_name(k), ms=4)
        error_bars(ax, cur, cur["total_bits"], metric, color=col)
    if frontier and len(data):
        fr = pareto_frontier(data, metric)
        ax.plot(fr["total_bits"], fr[metric], "k--", lw=1, alpha=0.7, label="Pareto frontier")
        ax.scatter(fr["total_bits"], fr[metric], s=60, facecolors="none", edgecolors="k", zorder=3)
    if known_E is not None:
        ax.axhline(known_E, color="0.4", ls=":", lw=1.2, label=f"entropy rate (irreducible) = {known_E:.3f}")
    log_axis(ax)
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
        error_bars(ax, sub, sub["total_bits"], metric, color=cmap(i % 10))
        # distinct markers and dashes: lines of near-equal types lie on top of each other
        ax.plot(sub["total_bits"], sub[metric], marker=_MARKERS[i % len(_MARKERS)], ls=_LINESTYLES[i % len(_LINESTYLES)],
                color=cmap(i % 10), ms=6, mfc="none", mew=1.3, label=f"{column}={v}")
    log_axis(ax)
    ax.set_xlabel("total model bits (log scale)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title or f"{_group_label(bits)}-bit: {column} comparison")
    ax.grid(True, which="both", alpha=0.3)
    if vals:
        ax.legend(fontsize=8)
    return fig


def plot_config_difference(df: pd.DataFrame, metric: str, column: str = "dtype", *, bits=None, title: str | None = None):
    """How much worse each ``column`` value is than the best one at the same size and precision.

    y = |metric − best metric among the ``column`` values| at that (size, bits) in the metric's
    worse direction (0 = the best type there), x = parameters (log). One panel per precision,
    distinct markers and line styles per value so that lines lying on top of each other stay
    visible. On an absolute axis the differences between data types (0.01 nats) vanish under the
    differences between sizes (2 nats).
    """
    if column not in df.columns:
        raise ValueError(f"comparison column {column!r} is not in the results table")
    data = _usable(df, metric, "total_bits")
    if "method" in data.columns:
        data = data[data["method"].astype(str) != "none"]
    data = data[data["bits"].astype(float) < 16]
    ks = sorted(data["bits"].astype(float).unique()) if bits is None else [float(b) for b in np.atleast_1d(bits)]
    if not ks:
        raise ValueError(f"no quantized rows with a finite {metric} to compare {column} values on")
    sign = _better_sign(metric)
    ncol = min(3, len(ks))
    nrow = -(-len(ks) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), squeeze=False, sharex=True)
    vals = sorted(data[column].dropna().unique(), key=lambda v: (str(type(v)), v))
    cmap = plt.get_cmap("tab10")
    for ax, k in zip(axes.ravel(), ks):
        at = data[data["bits"].astype(float) == k]
        # best row per (size, value) first (several block sizes ... per data type), then the gap
        scored = at.assign(_s=sign * at[metric].astype(float))
        best = scored.groupby(["n_params", column])["_s"].min().unstack(column)
        gap = best.sub(best.min(axis=1), axis=0)
        gap_se = _gap_se(scored, metric, column, best)
        for i, v in enumerate(vals):
            if v not in gap.columns:
                continue
            g = gap[v].dropna()
            ax.plot(g.index, g.to_numpy(), marker=_MARKERS[i % len(_MARKERS)], ls=_LINESTYLES[i % len(_LINESTYLES)],
                    color=cmap(i % 10), ms=6, mfc="none", mew=1.4, lw=1.2, label=f"{v}")
            if gap_se is not None and v in gap_se.columns:
                e = gap_se[v].reindex(g.index)
                ax.errorbar(g.index, g.to_numpy(), yerr=e.to_numpy(), fmt="none", ecolor=cmap(i % 10), capsize=2,
                            elinewidth=1.0, alpha=0.8)
        ax.axhline(0, color="k", lw=0.6)
        log_axis(ax)
        ax.set_title(f"{_group_label(k)}-bit", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric} − best {column}\n(same size and k)", fontsize=9)
    for ax in axes.ravel()[len(ks) - ncol:len(ks)]:
        ax.set_xlabel("parameters (log scale)")
        ax.xaxis.set_tick_params(labelbottom=True)
    _panel_legend(fig, axes, len(ks), title=column)
    fig.suptitle(title or f"{column} comparison: gap to the best {column} at each size and k ({metric})", fontsize=11)
    return fig


def _gap_se(scored: pd.DataFrame, metric: str, column: str, best: pd.DataFrame) -> pd.DataFrame | None:
    """SE of each (size, value)'s gap to the best value there: the two rows' SEs in quadrature
    (conservative: rows of one model share their tokens, so the paired SE is smaller)."""
    col = se_column(scored, metric)
    if col is None:
        return None
    idx = scored.groupby(["n_params", column])["_s"].idxmin()
    se = pd.to_numeric(scored.loc[idx.to_numpy(), col], errors="coerce")
    se.index = idx.index
    se = se.unstack(column)
    best_se = pd.Series([se.loc[n, best.loc[n].idxmin()] for n in best.index], index=best.index)
    return np.hypot(se, best_se.to_numpy()[:, None])
