"""Paired statistics against the 16-bit model: KL against dnll and zero-shot flips."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from kscale.plots.style import _bits_colors, _bits_name, error_bars


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
        vals = pd.to_numeric(cells[col], errors="coerce")
        pos = vals[vals > 0]
        if len(pos) and pos.max() / pos.min() > 100:  # spans decades: linear near 0, logarithmic above
            ax.set_yscale("symlog", linthresh=float(pos.quantile(0.1)))
        ax.set_xlabel(f"mean KL to the 16-bit model on {data} (nats/token, log)")
        ax.set_ylabel(col)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title or "paired statistics against the 16-bit model", fontsize=11)
    return fig
