"""Scaling-law fits with honest uncertainty.

* :mod:`kscale.fit.laws`        — ``LAWS`` registry (``power``, ``offset``, ``neff``, ``chinchilla``; degradation laws ``qid``, ``ptq``;
  ``precision`` from :mod:`kscale.fit.precision`) and :class:`Law`.
* :mod:`kscale.fit.core`        — :func:`fit_law` (summed Huber on log loss, L-BFGS-B from a grid) → :class:`LawFit`.
* :mod:`kscale.fit.bootstrap`   — :func:`bootstrap_law`: resampled fits, parameter intervals, optimal-``bits`` decisions.
* :mod:`kscale.fit.extrapolate` — :func:`extrapolate`: fit without the largest size(s), predict them.
* :mod:`kscale.fit.effect`      — :func:`precision_effect_score`: does that fit predict the precision effect
  (spread across k, order at equal total bits) at the held-out size, not only its level?
* :mod:`kscale.fit.degenerate`  — :func:`clean_points`: mask/clip collapsed models with a warning.
* :mod:`kscale.fit.degradation` — degradation laws' answers: :func:`token_elasticity` (does ΔL grow
  with training tokens?) and :func:`threshold_tokens` (tokens at which k-bit ΔL exceeds a threshold).
"""
from __future__ import annotations

from kscale.fit.degenerate import (
    CHANCE_ACCURACY,
    MAX_PPL,
    CleanReport,
    DegeneratePointsWarning,
    clean_points,
)
from kscale.fit.core import HUBER_DELTA, FitError, LawFit, fit_law, higher_is_better
from kscale.fit.laws import LAWS, Law, get_law, register_law
from kscale.fit import precision as _precision  # noqa: F401  registers the "precision" law
from kscale.fit.bootstrap import BootstrapResult, bootstrap_law, candidate_frame
from kscale.fit.extrapolate import ExtrapolationResult, extrapolate
from kscale.fit.effect import EffectScore, precision_effect_score
from kscale.fit.degradation import DEFAULT_THRESHOLD, Elasticity, threshold_tokens, token_elasticity

__all__ = [
    "CHANCE_ACCURACY", "MAX_PPL", "CleanReport", "DegeneratePointsWarning", "clean_points",
    "HUBER_DELTA", "FitError", "LawFit", "fit_law", "higher_is_better",
    "LAWS", "Law", "get_law", "register_law",
    "BootstrapResult", "bootstrap_law", "candidate_frame", "ExtrapolationResult", "extrapolate",
    "EffectScore", "precision_effect_score",
    "DEFAULT_THRESHOLD", "Elasticity", "threshold_tokens", "token_elasticity",
]
