"""Which law: fit each registered law without the largest size(s) and score its prediction of them.

A scaling law is a claim about models nobody measured, so the honest test is the next size up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kscale.fit import LAWS, FitError, extrapolate
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
        out.append(LawScore(name, err, worst, len(ext.heldout), reads_bits, "", ext))
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


def choose_law(scores: list[LawScore], requested: str, *, need_bits: bool, fallback: str = FALLBACK_LAW,
               metric: str = "") -> tuple[str, str]:
    """(law to use, one sentence saying why)."""
    ok = [s for s in scores if np.isfinite(s.error) and (s.reads_bits or not need_bits)]
    ok.sort(key=lambda s: s.error)
    ranking = ", ".join(f"`{s.law}` {err_text(s.error, metric)}" for s in ok)
    name = error_name(metric)
    if requested != AUTO_LAW:
        if not ok:
            return requested, f"`{requested}` was used because it was asked for (no held-out comparison was possible)."
        best = ok[0]
        if best.law == requested:
            return requested, (f"`{requested}` was asked for and also predicts the held-out largest size best "
                               f"({name}: {ranking}).")
        return requested, (f"`{requested}` was used because it was asked for; by held-out-size error `{best.law}` "
                           f"predicts the largest size better ({name}: {ranking}).")
    if not ok:
        return fallback, (f"`{fallback}` was used by default: no law could be scored on a held-out size "
                          "(too few sizes or points).")
    why = (f"`{ok[0].law}` was used: it predicts the held-out largest size best when fitted on the smaller ones "
           f"({name}: {ranking})")
    if len(ok) > 1 and ok[1].error < 1.25 * ok[0].error:
        why += f"; a weak preference, since `{ok[1].law}` is within 25% of it"
    if need_bits and any(np.isfinite(s.error) and not s.reads_bits for s in scores):
        why += "; laws that ignore `bits` were not eligible, since they cannot say which precision is best"
    return ok[0].law, why + "."


def law_table(scores: list[LawScore], used: str, metric: str = "") -> list[str]:
    head = "held-out mean abs. log ratio" if is_log_scored(metric) else "held-out mean abs. rel. error"
    lines = [f"| law | formula | {head} | max | rows | note |", "|---|---|---|---|---|---|"]
    for s in sorted(scores, key=lambda s: (not np.isfinite(s.error), s.error)):
        mark = " (used)" if s.law == used else ""
        lines.append(f"| `{s.law}`{mark} | {LAWS.get(s.law).formula} | {err_text(s.error, metric)} | "
                     f"{err_text(s.max_error, metric)} | {s.n_rows} | {s.note.replace('|', '/')} |")
    return lines + [""]
