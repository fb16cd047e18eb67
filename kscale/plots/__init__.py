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
* :func:`plot_paired` — KL against dnll and zero-shot flips (paired statistics).
* :func:`save_figure` — PNG + PDF under ``<study_dir>/figures/``.

One module per kind of figure: :mod:`~kscale.plots.style` (labels, colours, axes, error bars,
saving), :mod:`~kscale.plots.measured`, :mod:`~kscale.plots.fits`, :mod:`~kscale.plots.tokens`,
:mod:`~kscale.plots.paired`; every public name is re-exported here (``from kscale import plots``).
"""
from __future__ import annotations

from kscale.plots.style import error_bars, log_axis, metric_label, save_figure
from kscale.plots.measured import plot_ablation, plot_bits_scaling, plot_config_difference
from kscale.plots.fits import plot_extrapolation, plot_fit, plot_residuals
from kscale.plots.tokens import plot_degradation_vs_tokens, plot_threshold_tokens
from kscale.plots.paired import plot_paired

__all__ = ["error_bars", "log_axis", "metric_label", "save_figure", "plot_ablation", "plot_bits_scaling",
           "plot_config_difference", "plot_extrapolation", "plot_fit", "plot_residuals", "plot_degradation_vs_tokens",
           "plot_threshold_tokens", "plot_paired"]
