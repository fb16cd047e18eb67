"""Questions asked of a fitted degradation law (``qid``, ``ptq``: ΔL as a function of N, D and P).

* :func:`token_elasticity` — d log ΔL / d log D at fixed size and precision, per bootstrap resample
  (β of ``qid``, γ_D of ``ptq``): does quantization hurt more the longer a model was trained?
* :func:`threshold_tokens` — the training tokens D* at which k-bit degradation of an N-parameter
  model reaches a threshold (default 0.05 nats), with bootstrap intervals: Ouyang et al.'s (2025)
  "training level" read-off, extrapolated beyond the measured checkpoints.

Both work through the law's own prediction, so they serve any law whose log prediction is linear
in log D (both built-ins are; :func:`threshold_tokens` checks it instead of assuming it).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kscale.fit.bootstrap import BootstrapResult
from kscale.fit.core import LawFit, _target

log = logging.getLogger(__name__)

#: Default degradation threshold, nats/token: "k-bit costs more than 0.05 nats".
DEFAULT_THRESHOLD = 0.05


def _check(fit: LawFit) -> None:
    if "n_tokens" not in fit.law_spec.columns:
        raise ValueError(f"law {fit.law!r} does not read n_tokens: it says nothing about training tokens")


def _log_pred(fit: LawFit, frame: pd.DataFrame, thetas: np.ndarray) -> np.ndarray:
    """(B, rows) log of the modelled (positive) degradation."""
    return np.log(_target(fit.predict_batch(frame, thetas), fit.y))


def _frame(fit: LawFit, n_params, bits, n_tokens) -> pd.DataFrame:
    n_params, bits, n_tokens = np.broadcast_arrays(np.asarray(n_params, float), np.asarray(bits, float),
                                                   np.asarray(n_tokens, float))
    frame = pd.DataFrame({"n_params": n_params.ravel(), "bits": bits.ravel(), "n_tokens": n_tokens.ravel()})
    for c in fit.law_spec.needs:
        if c not in frame:
            frame[c] = float(fit.data[c].median())
    return frame


@dataclass(frozen=True)
class Elasticity:
    """d log ΔL / d log D (> 0: degradation grows with training tokens at fixed N and P).

    ``value`` is the full fit's, ``lo``/``hi`` the bootstrap percentile interval (NaN without a
    bootstrap), evaluated at ``n_params`` and ``bits``.
    """

    value: float
    lo: float
    hi: float
    n_params: float
    bits: float
    level: float

    @property
    def verdict(self) -> str:
        """``grows`` / ``shrinks`` when the interval excludes 0, else ``undecided``."""
        if not np.isfinite(self.lo):
            return "grows" if self.value > 0 else "shrinks"
        if self.lo > 0:
            return "grows"
        if self.hi < 0:
            return "shrinks"
        return "undecided"


def token_elasticity(fit: LawFit, boot: BootstrapResult | None = None, *, n_params: float | None = None,
                     bits: float | None = None, level: float = 0.95) -> Elasticity:
    """Slope of log ΔL in log D at (``n_params``, ``bits``; default: the fitted data's medians)."""
    _check(fit)
    n = float(fit.data["n_params"].median()) if n_params is None else float(n_params)
    k = float(fit.data["bits"].median()) if bits is None else float(bits)
    d0 = float(fit.data["n_tokens"].median())
    frame = _frame(fit, n, k, [d0, d0 * np.e])

    def slope(thetas: np.ndarray) -> np.ndarray:
        lp = _log_pred(fit, frame, thetas)
        return lp[:, 1] - lp[:, 0]  # log(e·D) − log D = 1

    value = float(slope(fit.theta[None, :])[0])
    lo = hi = float("nan")
    if boot is not None:
        s = slope(boot.thetas)
        lo, hi = (float(v) for v in np.quantile(s, [(1 - level) / 2, (1 + level) / 2]))
    return Elasticity(value=value, lo=lo, hi=hi, n_params=n, bits=k, level=level)


def threshold_tokens(fit: LawFit, boot: BootstrapResult | None = None, *, n_params: Sequence[float],
                     bits: Sequence[float], threshold: float = DEFAULT_THRESHOLD,
                     level: float = 0.95) -> pd.DataFrame:
    """Training tokens D* at which the law's degradation reaches ``threshold``, per (size, bits).

    log ΔL = a + s · log D at fixed N and P, so D* = exp((log threshold − a) / s). With s ≤ 0 the
    degradation never rises to the threshold by training longer: D* = inf when ΔL is below the
    threshold at every D, and 0 when it is above at every D. Intervals are percentiles over the
    bootstrap resamples (``inverted_cdf``, so an infinite D* in some resamples stays infinite
    instead of turning into NaN).

    Returns:
        One row per (n_params, bits): ``n_tokens`` (full fit), ``lo``, ``hi``, and ``p_finite``
        (share of resamples in which the threshold is reached at a finite D).

    Raises:
        ValueError: ``threshold`` <= 0, or the law is not log-linear in log D.
    """
    _check(fit)
    if not threshold > 0:
        raise ValueError(f"degradation threshold must be > 0; got {threshold!r}")
    nn, kk = np.meshgrid(np.asarray(n_params, float), np.asarray(bits, float), indexing="ij")
    nn, kk = nn.ravel(), kk.ravel()
    d0 = float(fit.data["n_tokens"].median())
    pts = [d0, d0 * np.e, d0 * np.e ** 2]
    frame = _frame(fit, np.repeat(nn, 3), np.repeat(kk, 3), np.tile(pts, len(nn)))

    def solve(thetas: np.ndarray) -> np.ndarray:
        lp = _log_pred(fit, frame, thetas).reshape(len(thetas), len(nn), 3)
        s = lp[..., 1] - lp[..., 0]
        curvature = lp[..., 2] - 2 * lp[..., 1] + lp[..., 0]
        if np.nanmax(np.abs(curvature)) > 1e-6 * max(1.0, float(np.nanmax(np.abs(s)))):
            raise ValueError(f"law {fit.law!r}: log degradation is not linear in log n_tokens; "
                             "threshold_tokens needs a law of the form ΔL ∝ D^s")
        a = lp[..., 0] - s * np.log(d0)
        gap = np.log(threshold) - a
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            out = np.where(s > 0, np.exp(gap / s), np.where(gap > 0, np.inf, 0.0))
        return out

    full = solve(fit.theta[None, :])[0]
    rows = {"n_params": nn, "bits": kk, "threshold": threshold, "n_tokens": full}
    if boot is not None:
        b = solve(boot.thetas)
        q = np.quantile(b, [(1 - level) / 2, (1 + level) / 2], axis=0, method="inverted_cdf")
        rows |= {"lo": q[0], "hi": q[1], "p_finite": np.mean(np.isfinite(b) & (b > 0), axis=0)}
    else:
        rows |= {"lo": np.nan, "hi": np.nan, "p_finite": np.nan}
    return pd.DataFrame(rows)
