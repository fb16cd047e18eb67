"""Figures from results tables and fits (matplotlib; DataFrames in, Figures out).

* :func:`plot_bits_scaling` — the k-bit paper's Figure 1: metric vs total model bits (log x),
  one line per precision k, drawn as linear interpolations like the paper (§4), frontier marked.
* :func:`plot_ablation` — block-size or data-type comparison at one precision (paper Fig. 3, App. C).
* :func:`plot_config_difference` — each data type's (or block size's) loss minus the best one's at the
  same size and k: the 0.01-nat differences an absolute axis hides.
* :func:`plot_degradation_vs_tokens` — ΔL vs training tokens, a line per size, a panel per k
  (Ouyang et al. 2025's figure), with a fitted degradation law.
* :func:`plot_threshold_tokens` — tokens at which k-bit ΔL exceeds a threshold, per size.
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
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kscale.fit.bootstrap import BootstrapResult  # noqa: E402
from kscale.fit.core import LawFit, _group_label  # noqa: E402
from kscale.fit.extrapolate import ExtrapolationResult  # noqa: E402
from kscale.fit.noise import se_column  # noqa: E402
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


def log_axis(ax, which: str = "x") -> None:
    """Log scale with labels only at powers of ten: matplotlib's default also labels the minor
    ticks (2×10⁴, 3×10⁴ ...) whenever an axis spans less than a decade or two, and they overlap."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(LogLocator(base=10))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    pos = ax.get_position()
    length_in = (pos.width * ax.figure.get_figwidth()) if which == "x" else (pos.height * ax.figure.get_figheight())
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else np.inf
    if decades < 1.0 or length_in / decades >= 2.4:
        # a short axis has one or two powers of ten: label 2× and 5× as well where there is room
        sci = LogFormatterSciNotation(labelOnlyBase=False)

        def fmt(v, pos=None):
            mant = v / 10 ** np.floor(np.log10(v) + 1e-9)
            return sci(v, pos) if any(abs(mant - m) < 1e-6 for m in (2.0, 5.0)) else ""

        axis.set_minor_formatter(FuncFormatter(fmt))
    else:
        axis.set_minor_formatter(NullFormatter())


def error_bars(ax, rows: pd.DataFrame, x, y: str, *, color, horizontal: bool = False, values=None) -> bool:
    """Draw ``rows``' evaluation noise (``<y>_se``) as error bars at (x, values or rows[y]); False
    when the rows carry no SE. Every figure that plots a measured point calls this (issue 17 §3)."""
    col = se_column(rows, y)
    if col is None or rows.empty:
        return False
    se = pd.to_numeric(rows[col], errors="coerce").to_numpy(float)
    v = rows[y].to_numpy(float) if values is None else np.asarray(values, dtype=float)
    xv = np.asarray(x, dtype=float)
    kw = dict(fmt="none", ecolor=color, elinewidth=1.0, capsize=2, alpha=0.8, zorder=2)
    if horizontal:
        ax.errorbar(v, xv, xerr=se, **kw)
    else:
        ax.errorbar(xv, v, yerr=se, **kw)
    return True


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")


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


def _better_sign(metric: str) -> float:
    from kscale.fit.core import higher_is_better

    return -1.0 if higher_is_better(metric) else 1.0


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


def _panel_legend(fig, axes, n_used: int, *, title: str | None = None, extra=()) -> None:
    """One legend for a grid of panels: in the first unused panel if there is one, else at the right."""
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    for h, lab in extra:
        handles.append(h)
        labels.append(lab)
    spare = axes.ravel()[n_used:]
    for ax in spare:
        ax.set_visible(False)
    if len(spare):
        spare[0].set_visible(True)
        spare[0].axis("off")
        spare[0].legend(handles, labels, title=title, loc="center", fontsize=9, title_fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    else:
        fig.tight_layout(rect=(0, 0, 0.84, 0.95))
        fig.legend(handles, labels, title=title, loc="center right", fontsize=8, title_fontsize=8)


def _size_colors(values) -> dict:
    vals = sorted({float(v) for v in values})
    cmap = plt.get_cmap("plasma")
    return {v: cmap(0.85 * i / max(1, len(vals) - 1)) for i, v in enumerate(vals)}


def plot_degradation_vs_tokens(df: pd.DataFrame, y: str, *, fit: LawFit | None = None,
                               boot: BootstrapResult | None = None, level: float = 0.95, bits=None,
                               title: str | None = None):
    """ΔL (``y`` = ``delta_<metric>``) against training tokens: a panel per precision, a line per size.

    Ouyang et al. (2025, Fig. 1 and 3) draw quantization-induced degradation this way: if the lines
    rise to the right, longer-trained checkpoints lose more when quantized. With ``fit`` (a ``qid``
    or ``ptq`` law) its curves are drawn dashed in each size's colour, with bootstrap bands when
    ``boot`` is given. Both axes are logarithmic where the data allow (ΔL > 0).
    """
    for c in (y, "n_tokens", "n_params", "bits"):
        if c not in df.columns:
            raise ValueError(f"column {c!r} is not in the results table")
    data = df[np.isfinite(pd.to_numeric(df[y], errors="coerce")) & np.isfinite(pd.to_numeric(df["n_tokens"], errors="coerce"))]
    if "status" in data.columns:
        data = data[data["status"].astype(str) == "ok"]
    data = data[data["bits"].astype(float) < 16]
    ks = sorted(data["bits"].astype(float).unique()) if bits is None else [float(b) for b in np.atleast_1d(bits)]
    if not ks:
        raise ValueError(f"no quantized rows with finite {y} and n_tokens to plot")
    sign = _better_sign(y[len("delta_"):]) if y.startswith("delta_") else 1.0
    ncol = min(3, len(ks))
    nrow = -(-len(ks) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False, sharex=True)
    colors = _size_colors(data["n_params"])
    d_all = data["n_tokens"].astype(float)
    grid = np.geomspace(d_all.min() / 1.5, d_all.max() * 1.5, 60)
    for ax, k in zip(axes.ravel(), ks):
        at = data[data["bits"].astype(float) == k]
        vals = sign * at[y].astype(float)
        use_log = bool((vals > 0).any())
        flat_d = []  # cells with ΔL <= 0 (within noise): drawn on the bottom edge, as the fit leaves them out
        for n, col in colors.items():
            sub = at[at["n_params"].astype(float) == n]
            if sub.empty:
                continue
            cur = sign * sub.groupby("n_tokens")[y].median().sort_index()
            shown = cur.where(cur > 0) if use_log else cur
            ax.plot(shown.index, shown.to_numpy(), "o-", color=col, ms=4, lw=1.2, label=f"N = {n:.3g}")
            pts = sub.sort_values("n_tokens")
            error_bars(ax, pts, pts["n_tokens"], y, color=col, values=sign * pts[y].astype(float))
            if use_log:
                flat_d += [(d, col) for d in cur.index[cur <= 0]]
            if fit is not None:
                frame = pd.DataFrame({"n_tokens": grid, "n_params": n, "bits": k})
                for c in fit.law_spec.needs:
                    if c not in frame:
                        frame[c] = float(fit.data[c].median())
                ax.plot(grid, sign * fit.predict(frame), "--", color=col, lw=1)
                if boot is not None:
                    lo, hi = boot.prediction_band(frame, level)
                    ax.fill_between(grid, sign * lo, sign * hi, color=col, alpha=0.15, lw=0)
        log_axis(ax)
        if use_log:
            pos = vals[vals > 0]
            ax.set_ylim(float(pos.min()) / 3, float(pos.max()) * 3)  # the measured range; curves beyond are clipped
            log_axis(ax, "y")
            if flat_d:
                bottom = ax.get_ylim()[0]
                ax.scatter([d for d, _ in flat_d], [bottom] * len(flat_d), marker="v", s=28, facecolors="none",
                           edgecolors=[c for _, c in flat_d], clip_on=False, zorder=4)
        else:
            ax.axhline(0, color="k", lw=0.6)
        ax.set_title(f"{_group_label(k)}-bit", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    base = y[len("delta_"):] if y.startswith("delta_") else y
    for ax in axes[:, 0]:
        ax.set_ylabel(f"ΔL = quantized − 16-bit\n{metric_label(base)}", fontsize=9)
    for ax in axes.ravel()[len(ks) - ncol:len(ks)]:
        ax.set_xlabel("training tokens D (log scale)")
        ax.xaxis.set_tick_params(labelbottom=True)
    extra = [(plt.Line2D([], [], color="0.3", marker="v", mfc="none", ls="none"), "ΔL ≤ 0 (noise; not fitted)")]
    if fit is not None:
        extra.append((plt.Line2D([], [], color="k", ls="--", lw=1),
                      f"law '{fit.law}'" + (f" ({level:.0%} band)" if boot is not None else "")))
    _panel_legend(fig, axes, len(ks), extra=extra)
    fig.suptitle(title or "quantization-induced degradation vs training tokens", fontsize=11)
    return fig


def plot_threshold_tokens(table: pd.DataFrame, *, measured: tuple[float, float] | None = None,
                          measured_sizes: tuple[float, float] | None = None, title: str | None = None):
    """Training tokens at which k-bit degradation reaches the threshold, against size, per k.

    ``table`` is :func:`kscale.fit.threshold_tokens`'s output (with bootstrap ``lo``/``hi``). The
    measured range of training tokens (``measured``) and of sizes (``measured_sizes``) are shaded:
    outside them the line is an extrapolation of the law. Infinite D* (never reached) is not drawn.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = _bits_colors(table["bits"])
    for k, col in colors.items():
        t = table[(table["bits"].astype(float) == k)].sort_values("n_params")
        ok = np.isfinite(t["n_tokens"]) & (t["n_tokens"] > 0)
        if not ok.any():
            continue
        ax.plot(t.loc[ok, "n_params"], t.loc[ok, "n_tokens"], "o-", color=col, ms=4, label=_bits_name(k))
        if "lo" in t and t["lo"].notna().any():
            lo = t["lo"].where(np.isfinite(t["lo"]) & (t["lo"] > 0))
            hi = t["hi"].where(np.isfinite(t["hi"]), np.nan)
            ax.fill_between(t["n_params"], lo, hi, color=col, alpha=0.18, lw=0)
    if measured is not None:
        ax.axhspan(*measured, color="0.5", alpha=0.12, lw=0, label="measured training tokens")
    if measured_sizes is not None:
        ax.axvspan(*measured_sizes, color="C0", alpha=0.06, lw=0, label="measured sizes")
    log_axis(ax)
    log_axis(ax, "y")
    thr = float(table["threshold"].iloc[0]) if len(table) else float("nan")
    ax.set_xlabel("parameters N (log scale)")
    ax.set_ylabel(f"training tokens D at which ΔL = {thr:g}")
    ax.set_title(title or f"tokens at which k-bit degradation exceeds {thr:g} nats (bands: bootstrap)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_paired(cells: pd.DataFrame, data: str, flip_columns=(), *, title: str | None = None):
    """KL (x, log) against dnll and against each ``flips_<task>`` (one panel each), with the
    rows' standard errors as error bars on both axes where they carry them."""
    kl = f"kl_{data}"
    panels = [c for c in [f"dnll_{data}", *flip_columns] if c in cells.columns]
    if kl not in cells.columns or not panels:
        raise ValueError(f"needs {kl} and dnll_{data} or flips_* columns")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    colors = _bits_colors(cells["bits"]) if "bits" in cells.columns else {None: "C0"}
    for ax, col in zip(axes[0], panels):
        for k, c in colors.items():
            sub = cells if k is None else cells[cells["bits"].astype(float) == k]
            sub = sub[pd.to_numeric(sub[kl], errors="coerce") > 0]
            ax.scatter(sub[kl], sub[col], color=c, s=20, label=_bits_name(k) if k is not None else None, zorder=3)
            error_bars(ax, sub, sub[kl], col, color=c)
            error_bars(ax, sub, sub[col], kl, color=c, horizontal=True)
        ax.set_xscale("log")
        ax.set_xlabel(f"mean KL to the 16-bit model on {data} (nats/token, log)")
        ax.set_ylabel(col)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title or "paired statistics against the 16-bit model", fontsize=11)
    return fig
