"""How well a law fitted without the largest size predicts the *precision effect* at that size.

The level of the held-out size is not what decides "which k is best": a law can miss the level by
12 % and still order the precisions right, or hit the level and predict no precision effect at all
(``neff`` with γ → 0 predicts 1.175 nats for every k of a size whose measured values run from 1.025
to 1.156). Two scores read the held-out rows of an :class:`ExtrapolationResult`:

* **effect error**: each row's difference to the same size's highest-precision row (the 16-bit
  baseline when measured), predicted vs measured: Σ|Δpred − Δobs| / Σ|Δobs| (0 = the precision
  effect exactly right; 1 = as wrong as predicting no effect at all);
* **rank agreement at equal total bits**: for each pair of precisions, at the total bits of each
  held-out row that both precisions' measured curves cover (best row per size, interpolated in log
  total bits as the paper draws them), whether the law orders the two precisions as measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kscale.fit.bootstrap import candidate_frame
from kscale.fit.core import higher_is_better


@dataclass(frozen=True)
class EffectScore:
    """Precision-effect scores of one held-out prediction (NaN where not computable).

    Attributes:
        effect_error: Σ|Δpred − Δobs| / Σ|Δobs| over the held-out rows, Δ = row − its size's reference row.
        spread_observed: measured max − min of the metric across the held-out size's rows (mean over sizes).
        spread_predicted: the same, predicted.
        rank_agreement: share of (pair of precisions, budget) comparisons ordered as measured.
        n_rank: number of such comparisons.
    """

    effect_error: float = math.nan
    spread_observed: float = math.nan
    spread_predicted: float = math.nan
    rank_agreement: float = math.nan
    n_rank: int = 0


def _better_score(values, metric: str) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return -v if higher_is_better(metric) else v


def precision_effect_score(ext, df: pd.DataFrame, metric: str, size_column: str = "n_params") -> EffectScore:
    """Score ``ext`` (fit without the largest size(s)) on the precision effect at the held-out size(s).

    Args:
        ext: :class:`kscale.fit.ExtrapolationResult` whose ``heldout`` has ``predicted``.
        df: all measured rows (the held-out size included), for the measured curves at equal total bits.
        metric: the metric column.
    """
    h = ext.heldout
    if h.empty or "bits" not in h.columns or h["bits"].nunique() < 2:
        return EffectScore()
    num = den = 0.0
    spreads_obs, spreads_pred = [], []
    for _, g in h.groupby(size_column):
        bits = g["bits"].astype(float)
        ref = g[bits == bits.max()]
        obs = g[metric].to_numpy(float) - float(ref[metric].mean())
        pred = g["predicted"].to_numpy(float) - float(ref["predicted"].mean())
        rest = (bits != bits.max()).to_numpy()
        num += float(np.abs(pred - obs)[rest].sum())
        den += float(np.abs(obs)[rest].sum())
        spreads_obs.append(float(np.ptp(g[metric].to_numpy(float))))
        spreads_pred.append(float(np.ptp(g["predicted"].to_numpy(float))))
    agree, n = _rank_agreement(ext, df, metric)
    return EffectScore(effect_error=num / den if den > 0 else math.nan,
                       spread_observed=float(np.mean(spreads_obs)), spread_predicted=float(np.mean(spreads_pred)),
                       rank_agreement=agree, n_rank=n)


def _curve(df: pd.DataFrame, metric: str, k: float) -> pd.DataFrame:
    """Best measured row per size at precision ``k`` (over data types ...), by total bits."""
    v = pd.to_numeric(df[metric], errors="coerce")
    keep = np.isfinite(v) & (df["bits"].astype(float) == k)
    if "status" in df.columns:
        keep &= df["status"].astype(str) == "ok"
    d = df.loc[keep].assign(_s=_better_score(v[keep], metric))
    if d.empty:
        return d
    return d.loc[d.groupby("n_params")["_s"].idxmin()].sort_values("total_bits")


def _rank_agreement(ext, df: pd.DataFrame, metric: str) -> tuple[float, int]:
    fit = ext.fit
    if "bits" not in fit.law_spec.needs or "total_bits" not in df.columns:
        return math.nan, 0
    fitted_bits = {float(g) for g in fit.data["bits"].astype(float).unique()}
    ks = sorted(k for k in ext.heldout["bits"].astype(float).unique() if k in fitted_bits)
    curves = {}
    for k in ks:
        c = _curve(df, metric, k)
        if len(c) >= 1:
            curves[k] = (np.log(c["total_bits"].to_numpy(float)), _better_score(c[metric], metric))
    budgets = sorted(set(ext.heldout["total_bits"].astype(float)))
    agree = n = 0
    for b in budgets:
        x = math.log(b)
        cover = [k for k, (xs, _) in curves.items() if xs.min() <= x <= xs.max()]
        if len(cover) < 2:
            continue
        obs = {k: float(np.interp(x, *curves[k])) for k in cover}
        cand = candidate_frame(fit, b)
        cand = cand[cand["bits"].astype(float).isin(cover)]
        pred = dict(zip(cand["bits"].astype(float), _better_score(fit.predict(cand), metric)))
        for i, a in enumerate(cover):
            for c in cover[i + 1:]:
                d_obs, d_pred = obs[a] - obs[c], pred[a] - pred[c]
                if d_obs == 0:
                    continue
                n += 1
                agree += int(np.sign(d_obs) == np.sign(d_pred))
    return (agree / n if n else math.nan), n
