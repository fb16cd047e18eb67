"""Pareto frontiers over (total model bits ↓, metric in its better direction).

The k-bit paper's question is a frontier question: for a given number of total model bits, which
(parameters, k, data type, block size) is best (Dettmers & Zettlemoyer 2022, Fig. 1)? This module
answers it from measured rows, without a fitted law:

* :func:`pareto_frontier` — non-dominated rows, per group (e.g. family) or overall;
* :func:`best_per_budget` — best configuration and runner-up (with the margin) under each budget;
* :func:`frontier_segments` — the same, one row per *change* of the best configuration;
* :func:`crossover` — the total bits at which k-bit overtakes another precision, reading each
  precision's curve as the paper draws it: linear interpolation in log total bits;
* :func:`compare_precisions` — every change of order between two precisions on the common grid
  of total bits where both curves are measured, each margin with its evaluation noise.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kscale.fit.core import higher_is_better
from kscale.fit.noise import se_column
from kscale.fit.paired_noise import difference_noise, paired_se_column

log = logging.getLogger(__name__)

#: Columns that identify a quantization configuration (independent of model size).
CONFIG_COLUMNS = ("method", "format", "dtype", "bits", "blocksize", "centered", "exponent_bits", "scale_bits",
                  "outlier_frac", "imatrix", "act_bits", "act_granularity", "kv_bits", "kv_granularity")
#: The format whose rows are labelled by their data type alone (kscale.quant.formats' default).
DEFAULT_FORMAT = "blockwise"


def _usable(df: pd.DataFrame, metric: str, cost: str) -> pd.DataFrame:
    for c in (metric, cost):
        if c not in df.columns:
            raise ValueError(f"column {c!r} is not in the results table; columns: {sorted(df.columns)}")
    keep = np.isfinite(pd.to_numeric(df[metric], errors="coerce")) & np.isfinite(pd.to_numeric(df[cost], errors="coerce"))
    if "status" in df.columns:
        keep &= df["status"].astype(str) == "ok"
    return df.loc[keep]


def _score(values: pd.Series, metric: str) -> np.ndarray:
    """Lower is better after this (accuracy is negated)."""
    v = values.to_numpy(dtype=float)
    return -v if higher_is_better(metric) else v


def pareto_frontier(df: pd.DataFrame, metric: str, *, by: str | Sequence[str] | None = None,
                    cost: str = "total_bits") -> pd.DataFrame:
    """Rows not dominated in (``cost`` lower, ``metric`` better), per ``by`` group or overall.

    A row is dominated when another row costs no more and scores no worse, and is strictly better in
    at least one of the two. Exact ties (same cost and metric) dominate neither each other, so all
    tied rows stay on the frontier. Rows with non-ok status or non-finite values are ignored.

    Returns:
        The frontier rows sorted by ``by`` then ``cost``, original index kept.
    """
    data = _usable(df, metric, cost)
    if by is None:
        return _frontier(data, metric, cost)
    parts = [_frontier(g, metric, cost) for _, g in data.groupby(by, sort=True)]
    return pd.concat(parts) if parts else data.iloc[:0]


def _frontier(data: pd.DataFrame, metric: str, cost: str) -> pd.DataFrame:
    if data.empty:
        return data
    c = data[cost].to_numpy(dtype=float)
    s = _score(data[metric], metric)
    order = np.lexsort((s, c))  # by cost, then score
    keep = np.zeros(len(data), dtype=bool)
    best_before = np.inf  # best score among rows strictly cheaper than the current cost
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and c[order[j]] == c[order[i]]:
            j += 1
        group = order[i:j]
        gbest = s[group].min()
        if gbest < best_before:
            keep[group[s[group] == gbest]] = True
        best_before = min(best_before, gbest)
        i = j
    return data.iloc[np.sort(np.flatnonzero(keep))].sort_values(cost, kind="stable")


def _config_label(row: pd.Series) -> str:
    runtime = _runtime_label(row)  # activations / KV cache (issue 20 §1): "A8 KV4-head"
    if "bits" in row.index and pd.notna(row["bits"]) and float(row["bits"]) >= 16:
        return f"16-bit weights {runtime}" if runtime else "16-bit baseline"  # dtype/blocksize/method mean nothing for the unquantized model
    parts = []
    for c in CONFIG_COLUMNS:
        if c in row.index and pd.notna(row[c]):
            v = row[c]
            if c == "bits":
                parts.append(f"{int(v) if float(v).is_integer() else v}-bit")
            elif c in ("method", "dtype"):
                parts.append(str(v))
            elif c == "blocksize":
                parts.append(f"B={v:g}" if isinstance(v, (int, float)) else f"B={v}")
            elif c == "outlier_frac" and float(v) > 0:
                parts.append(f"outliers={v:g}")
            elif c == "format" and v != DEFAULT_FORMAT:
                parts.append(str(v))  # a GGUF / MX type: its name says what a dtype would
            elif c == "imatrix" and v is True:
                parts.append("imatrix")
    return " ".join(parts + ([runtime] if runtime else []))


def _runtime_label(row: pd.Series) -> str:
    """``A8 KV4-head`` for a row whose activations or KV cache are quantized; "" when both are 16."""
    parts = []
    for kind, short in (("act", "A"), ("kv", "KV")):
        bits = row.get(f"{kind}_bits")
        if bits is not None and pd.notna(bits) and float(bits) < 16:
            gran = row.get(f"{kind}_granularity")
            parts.append(f"{short}{int(bits)}" + (f"-{gran}" if isinstance(gran, str) and gran != "token" else ""))
    return " ".join(parts)


def config_key(df: pd.DataFrame) -> pd.Series:
    """A readable label per row for its quantization configuration (size excluded)."""
    return df.apply(_config_label, axis=1)


def best_per_budget(df: pd.DataFrame, metric: str, budgets: Sequence[float] | None = None, *,
                    cost: str = "total_bits", by: str | None = None) -> pd.DataFrame:
    """The best row with ``cost <= budget``, and the runner-up from a *different* configuration.

    The runner-up is the best row whose quantization configuration (``CONFIG_COLUMNS``) differs
    from the winner's, so the margin answers "how much better is this choice than the next choice",
    not "than a smaller model of the same choice".

    Args:
        budgets: default = every distinct ``cost`` value in the table.
        by: optional grouping column (e.g. ``family``).

    Returns:
        One row per (group, budget): ``budget``, ``best_config``, ``best_size``, ``best_n_params``,
        ``best_{cost}``, ``best_value``, ``runner_up_config``, ``runner_up_size``, ``runner_up_value``,
        ``margin`` (≥ 0, in the metric's better direction; NaN without a runner-up); with a
        ``<metric>_se`` column also ``best_se``; with any noise column ``margin_se`` and
        ``margin_noise``: ``"paired"`` when winner and runner-up are cells of one checkpoint and the
        rows carry the paired SE (``dnll_<data>_se``; two quantized cells: the conservative bound
        hypot(se1, se2), :mod:`kscale.fit.paired_noise`), else ``"absolute"`` (the two rows'
        ``<metric>_se`` in quadrature).
    """
    data = _usable(df, metric, cost)
    se = se_column(data, metric)
    if se is not None:
        data = data.assign(**{se: pd.to_numeric(data[se], errors="coerce")})
    has_noise = se is not None or paired_se_column(data, metric) is not None
    groups = [(None, data)] if by is None else list(data.groupby(by, sort=True))
    rows = []
    for key, g in groups:
        g = g.assign(_config=config_key(g) if len(g) else [], _score=_score(g[metric], metric))
        bl = sorted(set(g[cost].astype(float))) if budgets is None else [float(b) for b in budgets]
        for budget in bl:
            under = g[g[cost].astype(float) <= budget].sort_values(["_score", cost], kind="stable")
            row = {"budget": budget} if by is None else {by: key, "budget": budget}
            if under.empty:
                row.update(best_config=None, best_value=np.nan, runner_up_config=None, runner_up_value=np.nan, margin=np.nan)
                rows.append(row)
                continue
            best = under.iloc[0]
            other = under[under["_config"] != best["_config"]]
            row.update(best_config=best["_config"], best_size=best.get("size"), best_n_params=best.get("n_params"),
                       **{f"best_{cost}": float(best[cost])}, best_value=float(best[metric]))
            if se is not None:
                row["best_se"] = float(best[se])
            if other.empty:
                row.update(runner_up_config=None, runner_up_size=None, runner_up_value=np.nan, margin=np.nan)
            else:
                ru = other.iloc[0]
                row.update(runner_up_config=ru["_config"], runner_up_size=ru.get("size"),
                           runner_up_value=float(ru[metric]), margin=float(ru["_score"] - best["_score"]))
                if has_noise:
                    row["margin_se"], row["margin_noise"] = difference_noise(best, ru, metric)
            rows.append(row)
    return pd.DataFrame(rows)


def frontier_segments(df: pd.DataFrame, metric: str, *, cost: str = "total_bits", by: str | None = None) -> pd.DataFrame:
    """The best measured configuration as a function of the budget, one row per stretch of budgets.

    :func:`best_per_budget` at every measured cost repeats the same answer for every budget between
    two changes of the winner (a 126-row study gave 67 rows). Here consecutive budgets with the
    same winner (configuration *and* size) collapse into one segment ``[budget_from, next segment's
    budget_from)``. Within a segment the winner is fixed and only more competitors become affordable,
    so the margin can only shrink: the runner-up and ``margin`` reported are those at the segment's
    last budget (``budget_to``), the closest any other configuration gets while this one is best.

    Returns:
        One row per (group, segment): ``budget_from``, ``budget_to``, ``n_budgets``, ``best_config``,
        ``best_size``, ``best_n_params``, ``best_{cost}``, ``best_value``, ``runner_up_config``,
        ``runner_up_size``, ``runner_up_value``, ``margin``.
    """
    per = best_per_budget(df, metric, cost=cost, by=by)
    if per.empty:
        return per
    keys = [by] if by is not None else []
    rows = []
    for _, g in (per.groupby(by, sort=True) if by is not None else [(None, per)]):
        g = g.sort_values("budget").reset_index(drop=True)
        who = g["best_config"].astype(str) + "\x1f" + g.get("best_size", pd.Series("", index=g.index)).astype(str)
        seg_id = (who != who.shift()).cumsum()
        for _, seg in g.groupby(seg_id, sort=True):
            first, last = seg.iloc[0], seg.iloc[-1]
            row = {k: first[k] for k in keys}
            row |= {"budget_from": float(first["budget"]), "budget_to": float(last["budget"]), "n_budgets": len(seg)}
            for c in ("best_config", "best_size", "best_n_params", f"best_{cost}", "best_value",
                      "runner_up_config", "runner_up_size", "runner_up_value", "margin", "best_se", "margin_se",
                      "margin_noise"):
                if c in seg.columns:
                    row[c] = (first if c.startswith("best_") else last)[c]
            rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Crossover:
    """Where ``low_bits`` overtakes ``high_bits`` along total model bits.

    ``status``: ``"crosses"`` (``total_bits`` is the last crossing; above it low_bits is better),
    ``"always"`` (low_bits better over the whole shared range; ``total_bits`` = its start),
    ``"never"`` (low_bits is worse at the end of the shared range), ``"no_overlap"``.
    """

    low_bits: float
    high_bits: float
    status: str
    total_bits: float | None


def precision_curve(df: pd.DataFrame, metric: str, bits: float, *, cost: str = "total_bits") -> pd.DataFrame:
    """Best ``metric`` per model size at one precision (over data types, block sizes ...), by cost."""
    data = _usable(df, metric, cost)
    data = data[data["bits"].astype(float) == float(bits)]
    if data.empty:
        return data
    data = data.assign(_score=_score(data[metric], metric))
    size_col = "n_params" if "n_params" in data.columns else cost
    idx = data.groupby(size_col)["_score"].idxmin()
    return data.loc[idx].sort_values(cost)


def crossover(df: pd.DataFrame, metric: str, low_bits: float, high_bits: float, *,
              cost: str = "total_bits") -> Crossover:
    """At which total bits does ``low_bits`` (e.g. 4) overtake ``high_bits`` (e.g. 8)?

    Each precision's curve is its best row per size, interpolated linearly in log ``cost`` (the
    paper's own way of drawing the curves, §1.2 of REFERENCES). The difference is evaluated at
    every point of either curve inside the shared range; the crossing is interpolated.
    """
    lo_c = precision_curve(df, metric, low_bits, cost=cost)
    hi_c = precision_curve(df, metric, high_bits, cost=cost)
    if len(lo_c) < 1 or len(hi_c) < 1:
        return Crossover(low_bits, high_bits, "no_overlap", None)
    xl, yl = np.log(lo_c[cost].to_numpy(float)), _score(lo_c[metric], metric)
    xh, yh = np.log(hi_c[cost].to_numpy(float)), _score(hi_c[metric], metric)
    a, b = max(xl.min(), xh.min()), min(xl.max(), xh.max())
    if a > b:
        return Crossover(low_bits, high_bits, "no_overlap", None)
    xs = np.unique(np.concatenate([xl, xh, [a, b]]))
    xs = xs[(xs >= a) & (xs <= b)]
    d = np.interp(xs, xl, yl) - np.interp(xs, xh, yh)  # < 0: low_bits better
    if d[-1] >= 0:
        return Crossover(low_bits, high_bits, "never", None)
    if np.all(d < 0):
        return Crossover(low_bits, high_bits, "always", float(np.exp(xs[0])))
    i = int(np.flatnonzero(d >= 0)[-1])  # last point where low_bits is not better
    x0, x1, d0, d1 = xs[i], xs[i + 1], d[i], d[i + 1]
    x = x0 if d0 == d1 else x0 + (x1 - x0) * d0 / (d0 - d1)
    return Crossover(low_bits, high_bits, "crosses", float(np.exp(x)))


#: A margin below this many standard errors is within the evaluation noise.
NOISE_SE = 2.0


@dataclass(frozen=True)
class PrecisionComparison:
    """Two precisions compared on the common grid of total bits where both curves are measured.

    ``points``: one row per grid budget: ``total_bits``, ``difference`` (low − high in the better
    direction: < 0 means ``low_bits`` is better), ``se`` (the two interpolated SEs in quadrature;
    NaN when the rows carry none), ``within_noise`` (|difference| < ``NOISE_SE`` · se; None when
    the noise is unknown) and ``measured`` (which curve has a measured row there: low/high/both).
    ``changes``: (total bits, the precision ahead above it, within noise) per change of order.
    """

    low_bits: float
    high_bits: float
    points: pd.DataFrame
    changes: tuple[tuple[float, float, bool | None], ...]


def _curve_xy(curve: pd.DataFrame, metric: str, cost: str, se: str | None):
    x = np.log(curve[cost].to_numpy(float))
    y = _score(curve[metric], metric)
    s = pd.to_numeric(curve[se], errors="coerce").to_numpy(float) if se else np.full(len(x), np.nan)
    return x, y, s


def compare_precisions(df: pd.DataFrame, metric: str, low_bits: float, high_bits: float, *,
                       cost: str = "total_bits") -> PrecisionComparison:
    """Compare two precisions at every total-bits value of either curve inside the range both
    measured (best row per size, linear in log total bits); every change of order is reported,
    not only the last, each margin with its noise (``<metric>_se`` when the rows carry it)."""
    se = se_column(df, metric)
    lo_c = precision_curve(df, metric, low_bits, cost=cost)
    hi_c = precision_curve(df, metric, high_bits, cost=cost)
    empty = PrecisionComparison(low_bits, high_bits, pd.DataFrame(), ())
    if len(lo_c) < 1 or len(hi_c) < 1:
        return empty
    xl, yl, sl = _curve_xy(lo_c, metric, cost, se)
    xh, yh, sh = _curve_xy(hi_c, metric, cost, se)
    a, b = max(xl.min(), xh.min()), min(xl.max(), xh.max())
    if a > b:
        return empty
    xs = np.unique(np.concatenate([xl, xh]))
    xs = xs[(xs >= a) & (xs <= b)]
    d = np.interp(xs, xl, yl) - np.interp(xs, xh, yh)
    s = np.hypot(np.interp(xs, xl, sl), np.interp(xs, xh, sh))
    within = [None if not np.isfinite(v) else bool(abs(dv) < NOISE_SE * v) for dv, v in zip(d, s)]
    measured = ["both" if (x in xl and x in xh) else ("low" if x in xl else "high") for x in xs]
    points = pd.DataFrame({"total_bits": np.exp(xs), "difference": d, "se": s, "within_noise": within,
                           "measured": measured})
    changes = []
    signs = np.sign(d)
    nz = np.flatnonzero(signs != 0)
    for i, j in zip(nz[:-1], nz[1:]):
        if signs[i] == signs[j]:
            continue
        x = xs[i] + (xs[j] - xs[i]) * d[i] / (d[i] - d[j])
        noisy = None if within[i] is None or within[j] is None else bool(within[i] or within[j])
        changes.append((float(np.exp(x)), low_bits if d[j] < 0 else high_bits, noisy))
    return PrecisionComparison(low_bits, high_bits, points, tuple(changes))


def compare_at_equal_size(df: pd.DataFrame, metric: str, low_bits: float, high_bits: float) -> pd.DataFrame:
    """Two precisions compared at every model size (checkpoint) where both are measured: each
    precision's best row there, ``difference`` (low − high in the better direction: < 0 means
    ``low_bits`` is better), ``se`` and ``noise`` (:func:`kscale.fit.paired_noise.difference_noise`:
    paired when the rows carry it, as the two cells share a checkpoint and its tokens) and
    ``within_noise`` (|difference| < ``NOISE_SE`` · se; None when the noise is unknown)."""
    size = "n_params" if "n_params" in df.columns else "size"
    data = _usable(df, metric, size)
    data = data.assign(_score=_score(data[metric], metric), _bits=data["bits"].astype(float))
    rows = []
    for n, g in data.groupby(size, sort=True):
        lo, hi = g[g["_bits"] == float(low_bits)], g[g["_bits"] == float(high_bits)]
        if lo.empty or hi.empty:
            continue
        a, b = lo.loc[lo["_score"].idxmin()], hi.loc[hi["_score"].idxmin()]
        se, noise = difference_noise(a, b, metric)
        d = float(a["_score"] - b["_score"])
        rows.append({size: n, "difference": d, "se": se, "noise": noise,
                     "within_noise": None if not np.isfinite(se) else bool(abs(d) < NOISE_SE * se)})
    return pd.DataFrame(rows, columns=[size, "difference", "se", "noise", "within_noise"])
