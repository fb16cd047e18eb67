"""Shared look of kscale's figures: labels, colours, log axes, error bars, saving.

Importing this module selects the headless Agg backend when no display is set, so figures render on
servers and in CI without opening a window.
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

from kscale.fit.core import _group_label, higher_is_better  # noqa: E402
from kscale.fit.noise import se_column  # noqa: E402

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


def _better_sign(metric: str) -> float:
    return -1.0 if higher_is_better(metric) else 1.0


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
