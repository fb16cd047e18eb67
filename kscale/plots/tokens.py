"""Figures over training tokens: degradation per checkpoint, tokens at a degradation threshold."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kscale.fit.bootstrap import BootstrapResult
from kscale.fit.core import LawFit
from kscale.plots.style import (_better_sign, _bits_colors, _bits_name, _group_label, _panel_legend, _size_colors,
                                error_bars, log_axis, metric_label)


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
