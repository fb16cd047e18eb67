"""Which storage format at which size: one base curve with a constant offset per format, and
bootstrap rankings of the formats at fixed total-bit budgets (issue 18 §4).

The offset law (Dettmers & Zettlemoyer 2022 compare data types by their curves of loss against
*total model bits*; here each format's curve is one shared power law moved by a constant)::

    ln(L - E) = a - alpha * ln(total_bits) + c_format        (c_reference = 0)

``L`` is the loss-like metric, ``E`` its irreducible part (the toy language's entropy rate when
known, else profiled). An offset on ln(L - E) multiplies the reducible loss, which for a power
law is the same as scaling the bits: format f's bits are worth ``exp(-c_f / alpha)`` bits of the
reference format (``bits_worth``). One law and one constant per format answers "is format f
better than g at every size?" with one number and its interval, instead of a table per size.

Rankings are read off the measured cells, not the law: at budget B, a format scores the best
metric among its cells with ``total_bits <= B`` (its Pareto frontier); each bootstrap draw
perturbs every cell by its evaluation noise (``<metric>_se`` when the rows carry it, else the
offset fit's residual scale) and ranks again, giving P(best) per format and budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from kscale.fit.noise import noise_of

__all__ = ["FormatOffsetFit", "FormatRanking", "fit_format_offsets", "format_key", "quantized_rows", "rank_formats",
           "weights_only"]

#: runtime-precision columns; a row with any of them below 16 is not a weights-only cell
RUNTIME_BITS = ("act_bits", "kv_bits")


def weights_only(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose activations and KV cache stayed at 16 bits (or that predate those columns).

    A W4A8 cell has the weight bits of a W4 cell but a different loss: a weight law fitted over
    both would read the activation error as a format effect, so the format fits take only these.
    """
    keep = pd.Series(True, index=df.index)
    for col in RUNTIME_BITS:
        if col in df.columns:
            bits = pd.to_numeric(df[col], errors="coerce")
            keep &= bits.isna() | (bits >= 16)
    return df[keep]


def format_key(row: pd.Series) -> str:
    """The format a row was stored in, as one label: ``nf-B64`` for the paper's blockwise types
    (data type and block size; k varies along the curve), the registry name for GGUF/MX types
    (``q4_0``, ``mxfp4``; ``-imatrix`` when weighted by an importance matrix)."""
    fmt = row.get("format")
    if fmt is None or (isinstance(fmt, float) and math.isnan(fmt)) or fmt == "blockwise":
        block = row.get("blocksize")
        block = "row" if block is None or (isinstance(block, float) and math.isnan(block)) else f"{int(block)}"
        return f"{row.get('dtype')}-B{block}"
    im = row.get("imatrix")
    return f"{fmt}-imatrix" if im is True or im == 1.0 else str(fmt)


def quantized_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The weights-only quantized rows (ok, bits < 16, metric and total bits known), with their
    ``format_key``: what the law and the ranking read."""
    ok = df[df["status"].astype(str) == "ok"] if "status" in df.columns else df
    ok = weights_only(ok)
    ok = ok[pd.to_numeric(ok["bits"], errors="coerce") < 16]
    ok = ok[pd.to_numeric(ok[metric], errors="coerce").notna() & (pd.to_numeric(ok["total_bits"]) > 0)]
    return ok.assign(format_key=[format_key(r) for _, r in ok.iterrows()])


@dataclass(frozen=True)
class FormatOffsetFit:
    """The fitted offset law. ``offsets``: format -> c_f (reference 0); ``intervals``: format ->
    (low, high) bootstrap percentile interval (95 %); ``bits_worth``: exp(-c_f / alpha)."""

    metric: str
    reference: str
    a: float
    alpha: float
    E: float
    offsets: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    residual_sd: float
    n_rows: int
    E_known: bool
    dropped: int = 0
    sizes: dict[str, int] = field(default_factory=dict)

    def comparable(self, min_sizes: int = 2) -> list[str]:
        """Formats measured at ``min_sizes`` or more sizes: at one size a format's c also holds
        that size's deviation from the base curve, so it is not a property of the format."""
        return [f for f in self.offsets if self.sizes.get(f, min_sizes) >= min_sizes]

    @property
    def bits_worth(self) -> dict[str, float]:
        return {f: math.exp(-c / self.alpha) for f, c in self.offsets.items()}

    def predict(self, total_bits: np.ndarray, formats: Sequence[str]) -> np.ndarray:
        c = np.array([self.offsets[f] for f in formats])
        return self.E + np.exp(self.a - self.alpha * np.log(np.asarray(total_bits, float)) + c)

    def table(self) -> pd.DataFrame:
        worth = self.bits_worth
        return pd.DataFrame([{"format": f, "c_format": c, "c_low": self.intervals.get(f, (math.nan,) * 2)[0],
                              "c_high": self.intervals.get(f, (math.nan,) * 2)[1], "bits_worth": worth[f],
                              "sizes": self.sizes.get(f)}
                             for f, c in sorted(self.offsets.items(), key=lambda kv: kv[1])])


def _design(log_bits: np.ndarray, keys: np.ndarray, formats: list[str]) -> np.ndarray:
    cols = [np.ones_like(log_bits), -log_bits] + [(keys == f).astype(float) for f in formats[1:]]
    return np.column_stack(cols)


def _solve(X: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, float]:
    beta, *_ = np.linalg.lstsq(X, z, rcond=None)
    resid = z - X @ beta
    return beta, float(resid @ resid)


def _profile_E(y: np.ndarray, X: np.ndarray) -> float:
    """E by profile least squares on a grid below min(y) (when the irreducible loss is unknown)."""
    top = float(np.min(y))
    grid = top - (top * np.geomspace(1e-3, 1.0, 60))[::-1]
    grid = grid[grid >= 0] if (grid >= 0).any() else np.array([0.0])
    sse = [_solve(X, np.log(y - e))[1] for e in grid]
    return float(grid[int(np.argmin(sse))])


def fit_format_offsets(df: pd.DataFrame, metric: str, *, E: float | None = None, reference: str | None = None,
                       n_bootstrap: int = 1000, seed: int = 0) -> FormatOffsetFit:
    """Fit ln(metric - E) = a - alpha ln(total_bits) + c_format over the weights-only quantized
    rows of ``df`` (ok status, bits < 16). ``reference``: the format with c = 0 (default: the one
    with the most rows). Intervals: rows resampled with replacement, ``n_bootstrap`` refits.
    Raises ValueError when fewer than two total-bit values or no format has rows."""
    rows = quantized_rows(df, metric)
    y_all = pd.to_numeric(rows[metric]).to_numpy(float)
    if E is not None:
        above = y_all > E
        rows, y_all = rows[above], y_all[above]
    dropped = int(len(quantized_rows(df, metric)) - len(rows))
    if rows.empty or rows["total_bits"].nunique() < 2:
        raise ValueError(f"the offset law needs quantized rows of `{metric}` at two or more total-bit values; "
                         f"got {rows['total_bits'].nunique() if len(rows) else 0}")
    counts = rows["format_key"].value_counts()
    if reference is None:
        reference = str(sorted(counts.index, key=lambda f: (-counts[f], f))[0])
    if reference not in counts.index:
        raise ValueError(f"reference format {reference!r} has no rows; formats: {', '.join(sorted(counts.index))}")
    formats = [reference] + sorted(f for f in counts.index if f != reference)
    keys = rows["format_key"].to_numpy()
    log_bits = np.log(pd.to_numeric(rows["total_bits"]).to_numpy(float))
    X = _design(log_bits, keys, formats)
    e_hat = float(E) if E is not None else _profile_E(y_all, X)
    z = np.log(y_all - e_hat) if E is not None else np.log(np.maximum(y_all - e_hat, 1e-12))
    beta, sse = _solve(X, z)
    dof = max(len(z) - X.shape[1], 1)
    offsets = {reference: 0.0, **{f: float(b) for f, b in zip(formats[1:], beta[2:])}}
    intervals = _bootstrap_offsets(X, z, formats, n_bootstrap, seed)
    size_col = "n_params" if "n_params" in rows.columns else ("size" if "size" in rows.columns else None)
    sizes = ({str(f): int(n) for f, n in rows.groupby("format_key")[size_col].nunique().items()}
             if size_col else {})
    return FormatOffsetFit(metric=metric, reference=reference, a=float(beta[0]), alpha=float(beta[1]), E=e_hat,
                           offsets=offsets, intervals=intervals, residual_sd=math.sqrt(sse / dof),
                           n_rows=len(z), E_known=E is not None, dropped=dropped, sizes=sizes)


def _bootstrap_offsets(X: np.ndarray, z: np.ndarray, formats: list[str], n: int, seed: int
                       ) -> dict[str, tuple[float, float]]:
    if n <= 0:
        return {}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        idx = rng.integers(0, len(z), len(z))
        Xb = X[idx]
        if np.linalg.matrix_rank(Xb) < X.shape[1]:
            continue  # a format (or the bits slope) left out of this resample
        draws.append(_solve(Xb, z[idx])[0][2:])
    out = {formats[0]: (0.0, 0.0)}
    if draws:
        arr = np.array(draws)
        for j, f in enumerate(formats[1:]):
            out[f] = (float(np.percentile(arr[:, j], 2.5)), float(np.percentile(arr[:, j], 97.5)))
    return out


@dataclass(frozen=True)
class FormatRanking:
    """Formats ranked at each budget. ``table`` columns: budget, format, value (best measured
    metric at <= budget), rank (1 = best), p_best (share of bootstrap draws where it was best),
    total_bits (of the cell that scored)."""

    metric: str
    table: pd.DataFrame
    noise: str
    n_bootstrap: int
    budgets: tuple[float, ...] = field(default=())


def _frontier_at(bits: np.ndarray, values: np.ndarray, budget: float) -> tuple[float, int]:
    m = bits <= budget
    if not m.any():
        return math.nan, -1
    i = np.flatnonzero(m)[int(np.argmin(values[m]))]
    return float(values[i]), int(i)


def rank_formats(df: pd.DataFrame, metric: str, budgets: Sequence[float] | None = None, *,
                 noise: np.ndarray | float | None = None, n_bootstrap: int = 1000, seed: int = 0,
                 higher_is_better: bool = False) -> FormatRanking:
    """Rank the formats at each total-bit budget by their best cell within it, with bootstrap
    probabilities of being best. ``noise``: per-row (aligned with the weights-only quantized rows)
    or one standard error; None = the rows' ``<metric>_se``; without either the ranking is given
    with p_best NaN. Budgets default to 6 log-spaced values over the cells' total bits."""
    rows = quantized_rows(df, metric).reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no weights-only quantized rows with `{metric}` to rank")
    sign = -1.0 if higher_is_better else 1.0
    values = sign * pd.to_numeric(rows[metric]).to_numpy(float)
    bits = pd.to_numeric(rows["total_bits"]).to_numpy(float)
    if budgets is None:
        budgets = tuple(float(b) for b in np.geomspace(bits.min(), bits.max(), 6))
    if noise is None:
        se = noise_of(rows, metric)
        words = f"`{metric}_se` of the rows" if se is not None else "unknown"
    else:
        se = np.broadcast_to(np.asarray(noise, float), values.shape).copy()
        words = "given"
    formats = sorted(rows["format_key"].unique())
    groups = {f: np.flatnonzero(rows["format_key"].to_numpy() == f) for f in formats}
    rng = np.random.default_rng(seed)
    use_boot = se is not None and n_bootstrap > 0 and np.isfinite(se).all()
    draws = [values + rng.standard_normal(values.shape) * se for _ in range(n_bootstrap)] if use_boot else []
    out = []
    for b in budgets:
        scored = {f: _frontier_at(bits[g], values[g], b) for f, g in groups.items()}
        present = [f for f in formats if not math.isnan(scored[f][0])]
        if not present:
            continue
        wins = dict.fromkeys(present, 0)
        for v in draws:
            best = min(present, key=lambda f: _frontier_at(bits[groups[f]], v[groups[f]], b)[0])
            wins[best] += 1
        order = sorted(present, key=lambda f: scored[f][0])
        for rank, f in enumerate(order, 1):
            value, i = scored[f]
            out.append({"budget": float(b), "format": f, "value": sign * value, "rank": rank,
                        "p_best": wins[f] / len(draws) if draws else math.nan,
                        "total_bits": float(bits[groups[f][i]]), "size": rows.loc[groups[f][i], "size"]
                        if "size" in rows.columns else None})
    return FormatRanking(metric=metric, table=pd.DataFrame(out), noise=words, n_bootstrap=len(draws),
                         budgets=tuple(float(b) for b in budgets))
