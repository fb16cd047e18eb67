"""Which law: fit each registered law without the largest size(s) and score its prediction of them.

A scaling law is a claim about models nobody measured, so the honest test is the next size up. For
the question the study asks ("which k is best at this budget") the quantity that decides is the
*precision effect* at that size (:func:`kscale.fit.precision_effect_score`: the spread across k and
data types, and the order of k at equal total bits), not the level; loss laws that read ``bits`` are
chosen by it, and both errors are reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kscale.fit import LAWS, EffectScore, FitError, extrapolate, precision_effect_score
from kscale.report.inputs import AUTO_LAW, FALLBACK_LAW
from kscale.report.text import fmt, pct


@dataclass(frozen=True)
class LawScore:
    law: str
    error: float  # mean held-out error (see held_out_error); NaN when not possible
    max_error: float
    n_rows: int
    reads_bits: bool
    note: str = ""
    ext: object = None
    effect: EffectScore = EffectScore()

    @property
    def effect_error(self) -> float:
        return self.effect.effect_error


def compare_laws(df: pd.DataFrame, metric: str, names, *, n_holdout: int = 1) -> list[LawScore]:
    """Fit each law without the ``n_holdout`` largest sizes and score its prediction of them."""
    out = []
    for name in names:
        spec = LAWS.get(name)
        missing = [c for c in spec.needs if c not in df.columns]
        reads_bits = "bits" in spec.needs
        if missing:
            out.append(LawScore(name, math.nan, math.nan, 0, reads_bits, f"needs columns {missing}"))
            continue
        if n_holdout < 1:
            out.append(LawScore(name, math.nan, math.nan, 0, reads_bits, "held-out check switched off (--n-holdout 0)"))
            continue
        try:
            ext = extrapolate(df, name, y=metric, n_holdout=n_holdout)
        except (FitError, ValueError) as e:
            out.append(LawScore(name, math.nan, math.nan, 0, reads_bits, str(e)))
            continue
        if ext.heldout.empty:
            out.append(LawScore(name, math.nan, math.nan, 0, reads_bits, "no held-out rows it can predict", ext))
            continue
        err, worst = held_out_error(ext, metric)
        effect = precision_effect_score(ext, df, metric) if reads_bits and spec.kind == "loss" else EffectScore()
        out.append(LawScore(name, err, worst, len(ext.heldout), reads_bits, "", ext, effect))
    return out


def is_log_scored(metric: str) -> bool:
    """Degradations span orders of magnitude: scored by |log ratio|, not relative error."""
    return metric.startswith(("delta_", "dnll_", "kl_"))


def held_out_error(ext, metric: str) -> tuple[float, float]:
    """(mean, max) error of the held-out predictions: relative error for a metric, |log ratio| for a
    degradation (``delta_*``, ``dnll_*``, ``kl_*``), whose values span orders of magnitude (relative
    errors of ΔL ≈ 1e-5 cells would drown everything else)."""
    if is_log_scored(metric):
        obs = np.abs(ext.heldout[metric].to_numpy(dtype=float))
        pred = np.abs(ext.heldout["predicted"].to_numpy(dtype=float))
        e = np.abs(np.log(pred / obs))
        return ext.mean_abs_log_error, float(np.max(e))
    return ext.mean_abs_rel_error, ext.max_abs_rel_error


def error_name(metric: str) -> str:
    return "mean |log(predicted/observed)|" if is_log_scored(metric) else "mean |relative error|"


def err_text(v: float, metric: str) -> str:
    return fmt(v) if is_log_scored(metric) else pct(v)


def _by_effect(scores: list[LawScore]) -> bool:
    """Choose by the precision effect when at least one eligible law has an effect error."""
    return any(np.isfinite(s.effect_error) for s in scores)


def _ranking(ok: list[LawScore], metric: str, by_effect: bool) -> str:
    if by_effect:
        return ", ".join(f"`{s.law}` {pct(s.effect_error)} (level {err_text(s.error, metric)})" for s in ok)
    return ", ".join(f"`{s.law}` {err_text(s.error, metric)}" for s in ok)


def choose_law(scores: list[LawScore], requested: str, *, need_bits: bool, fallback: str = FALLBACK_LAW,
               metric: str = "") -> tuple[str, str]:
    """(law to use, one sentence saying why).

    Among the laws that can decide (those reading ``bits`` when ``need_bits``), the one whose
    held-out precision-effect error is smallest (ties and laws without one: by level error); when
    no law has a precision-effect score (one precision, degradation laws), by level error.
    """
    ok = [s for s in scores if np.isfinite(s.error) and (s.reads_bits or not need_bits)]
    by_effect = _by_effect(ok)
    if by_effect:
        ok = [s for s in ok if np.isfinite(s.effect_error)]
        ok.sort(key=lambda s: (s.effect_error, s.error))
        name = ("error of the predicted precision effect at the held-out size, Σ|Δpredicted − Δobserved| / "
                f"Σ|Δobserved| with Δ = row − the size's highest-precision row (and {error_name(metric)} of the level)")
    else:
        ok.sort(key=lambda s: s.error)
        name = error_name(metric)
    ranking = _ranking(ok, metric, by_effect)
    target = "precision effect at the held-out largest size" if by_effect else "held-out largest size"
    if requested != AUTO_LAW:
        if not ok:
            return requested, f"`{requested}` was used because it was asked for (no held-out comparison was possible)."
        if ok[0].law == requested:
            return requested, f"`{requested}` was asked for and also predicts the {target} best ({name}: {ranking})."
        return requested, (f"`{requested}` was used because it was asked for; `{ok[0].law}` predicts the {target} "
                           f"better ({name}: {ranking}).")
    if not ok:
        return fallback, (f"`{fallback}` was used by default: no law could be scored on a held-out size "
                          "(too few sizes or points).")
    if by_effect:
        why = (f"`{ok[0].law}` was used: fitted on the smaller sizes, it predicts the precision effect at the held-out "
               f"largest size best — the quantity that decides which precision is optimal ({name}: {ranking})")
        key = [s.effect_error for s in ok]
    else:
        why = (f"`{ok[0].law}` was used: it predicts the held-out largest size best when fitted on the smaller ones "
               f"({name}: {ranking})")
        key = [s.error for s in ok]
    if len(ok) > 1 and key[1] < 1.25 * key[0]:
        why += f"; a weak preference, since `{ok[1].law}` is within 25% of it"
    if by_effect and ok[0].effect_error >= 0.5:
        why += (f"; even `{ok[0].law}` misses the measured precision effect by {pct(ok[0].effect_error)} of its size, "
                "so no law here predicts what decides the answer well")
    if need_bits and any(np.isfinite(s.error) and not s.reads_bits for s in scores):
        why += "; laws that ignore `bits` were not eligible, since they cannot say which precision is best"
    return ok[0].law, why + "."


def law_table(scores: list[LawScore], used: str, metric: str = "") -> list[str]:
    head = "held-out mean abs. log ratio" if is_log_scored(metric) else "held-out level: mean abs. rel. error"
    effect = any(np.isfinite(s.effect_error) for s in scores)
    extra = (" | precision-effect error | spread across k, measured / predicted | order of k at equal bits"
             if effect else "")
    lines = [f"| law | formula | {head} | max{extra} | rows | note |", "|---" * (6 + (3 if effect else 0)) + "|"]
    key = (lambda s: (not np.isfinite(s.effect_error), s.effect_error, s.error)) if effect else \
        (lambda s: (not np.isfinite(s.error), s.error))
    for s in sorted(scores, key=key):
        mark = " (used)" if s.law == used else ""
        cells = ""
        if effect:
            e = s.effect
            order = f"{e.rank_agreement:.0%} of {e.n_rank}" if e.n_rank else "n/a"
            cells = f" | {pct(e.effect_error)} | {fmt(e.spread_observed)} / {fmt(e.spread_predicted)} | {order}"
        lines.append(f"| `{s.law}`{mark} | {LAWS.get(s.law).formula} | {err_text(s.error, metric)} | "
                     f"{err_text(s.max_error, metric)}{cells} | {s.n_rows} | {s.note.replace('|', '/')} |")
    return lines + [""]
