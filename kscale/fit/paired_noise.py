"""The noise of a *difference* between two cells, paired when they share a checkpoint.

Two cells of one checkpoint (say its 4- and 3-bit quantizations) are scored on the same tokens,
so the token-to-token variation common to both cancels in their difference. The rows carry that
paired noise against the checkpoint's own 16-bit row (issue 19): ``dnll_<data>_se`` for
``nll_<data>`` / ``dnll_<data>`` (and ``nll_<data>_paired``), ``kl_<data>_se`` for ``kl_<data>``
(KL is computed per token against the same reference). It is typically 5-20x below the absolute
``nll_<data>_se``, which is what two *different* models on the same text must be compared with.

* A quantized cell against its own 16-bit cell: the SE of the difference *is* ``dnll_se`` (the
  16-bit row's paired SE against itself is exactly 0).
* Two quantized cells q1, q2 of one checkpoint: SE(dnll_q1 − dnll_q2) is not in the rows. Both
  differences share the 16-bit pass's per-token noise, so they are positively correlated and
  Var(d1 − d2) = v1 + v2 − 2·cov ≤ v1 + v2: ``hypot(se1, se2)`` is a conservative bound, used here.
* Cells of different checkpoints (other sizes, other training lengths): the absolute SEs in
  quadrature (``<metric>_se``), as before.

Cells that ``eval.target_se`` stopped early (``subset_<data>`` < 1) have their absolute metrics
over a subset of the tokens; :func:`use_paired_estimates` puts the paired full-set estimate
``nll_<data>_paired`` in their place before anything is fitted.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from kscale.fit.noise import se_column

#: Columns that together name one checkpoint (those a table has); rows equal on all of them were
#: scored on the same tokens by the same weights before quantization.
CHECKPOINT_COLUMNS = ("family", "size", "n_params", "n_tokens", "checkpoint", "revision", "seed",
                      "train_bits_w", "train_bits_a", "train_bits_kv", "qat_from")
#: What a missing value of a checkpoint column means (rows written before the column existed):
#: the toy ladder's training precision is full precision unless a row says otherwise.
CHECKPOINT_DEFAULTS = {"train_bits_w": 16.0, "train_bits_a": 16.0, "train_bits_kv": 16.0, "qat_from": 0.0}
#: metric kind -> the kind whose ``_se`` column is that metric's paired noise against the 16-bit row.
PAIRED_KIND = {"nll": "dnll", "dnll": "dnll", "kl": "kl"}
#: What each kind of noise is called in the report's sentences.
NOISE_KIND_WORDS = {"paired": "paired SE (same checkpoint, same tokens)", "absolute": "absolute SE"}


def _data_key(metric: str) -> tuple[str, str] | None:
    kind, _, rest = metric.partition("_")
    if not rest or kind not in PAIRED_KIND:
        return None
    return kind, rest[:-len("_paired")] if rest.endswith("_paired") else rest


def paired_se_column(df: pd.DataFrame, metric: str) -> str | None:
    """The column holding ``metric``'s paired SE against the 16-bit row (``dnll_<data>_se`` for
    ``nll_<data>``), or None when the rows carry none."""
    key = _data_key(metric)
    if key is None:
        return None
    col = f"{PAIRED_KIND[key[0]]}_{key[1]}_se"
    return col if col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any() else None


def paired_noise(df: pd.DataFrame, metric: str) -> np.ndarray | None:
    """Per-row paired SE (0 on 16-bit rows, the reference against itself), or None without a column."""
    col = paired_se_column(df, metric)
    if col is None:
        return None
    se = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    if "bits" in df.columns:
        se = np.where(pd.to_numeric(df["bits"], errors="coerce").to_numpy(float) >= 16, 0.0, se)
    return se


def checkpoint_key(df: pd.DataFrame) -> pd.Series:
    """One string per row naming its checkpoint (:data:`CHECKPOINT_COLUMNS` the table has)."""
    cols = [c for c in CHECKPOINT_COLUMNS if c in df.columns]
    if not cols:
        return pd.Series([""] * len(df), index=df.index, dtype=object)
    def text(c: str) -> pd.Series:  # None and NaN are both "missing" (rows from JSON mix them)
        return df[c].astype(object).where(df[c].notna(), CHECKPOINT_DEFAULTS.get(c, "")).map(str)

    key = text(cols[0])
    for c in cols[1:]:
        key = key + "\x1f" + text(c)
    return key


def difference_noise(a: pd.Series, b: pd.Series, metric: str) -> tuple[float, str | None]:
    """(SE of ``a[metric] − b[metric]``, ``"paired"`` / ``"absolute"``) for two rows of one table
    (see the module docstring); (NaN, None) when the rows carry no noise for it."""
    frame = pd.DataFrame([a, b])
    same = checkpoint_key(frame).nunique() == 1
    if same:
        se = paired_noise(frame, metric)
        if se is not None and np.isfinite(se).all():
            return float(np.hypot(se[0], se[1])), "paired"
    col = se_column(frame, metric)
    if col is None:
        return np.nan, None
    s = pd.to_numeric(frame[col], errors="coerce").to_numpy(float)
    return float(np.hypot(s[0], s[1])), ("absolute" if np.isfinite(s).all() else None)


def pairwise_paired_se(rows: pd.DataFrame, metric: str) -> float:
    """Median over all pairs of ``rows`` (one checkpoint) of the paired SE of their difference
    (conservative bound for two quantized cells); NaN without paired columns or pairs."""
    se = paired_noise(rows, metric)
    if se is None:
        return np.nan
    se = se[np.isfinite(se)]
    if len(se) < 2:
        return np.nan
    i, j = np.triu_indices(len(se), k=1)
    return float(np.median(np.hypot(se[i], se[j])))


def use_paired_estimates(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``df`` with every early-stopped cell's ``nll_<data>`` (and ``ppl_``/``bpb_``) replaced by its
    paired full-set estimate ``nll_<data>_paired``, and a note per dataset saying how many cells.

    A stopped cell's own ``nll_<data>`` is the mean over the windows it happened to score, which
    differ from the full set by far more than its paired SE; the 16-bit full-set NLL plus the
    paired ``dnll`` is the estimate of the same quantity every full cell measured. Its absolute SE
    becomes hypot(16-bit row's full-set ``nll_se``, ``dnll_se``) when that row is in the table
    (else the subset's own SE stays: larger, so conservative). The subset values are kept as
    ``nll_<data>_subset``. ``bpb`` is scaled by the same ratio (bytes per token of the subset).
    """
    out = df.copy()
    notes = []
    for col in [c for c in df.columns if c.startswith("subset_")]:
        data = col[len("subset_"):]
        nll, paired = f"nll_{data}", f"nll_{data}_paired"
        if nll not in df.columns or paired not in df.columns:
            continue
        frac = pd.to_numeric(df[col], errors="coerce")
        est = pd.to_numeric(df[paired], errors="coerce")
        stopped = (frac < 1) & est.notna()
        if not stopped.any():
            continue
        old = pd.to_numeric(df[nll], errors="coerce")
        out[f"{nll}_subset"] = old
        out.loc[stopped, nll] = est[stopped]
        if f"ppl_{data}" in df.columns:
            out.loc[stopped, f"ppl_{data}"] = np.exp(est[stopped])
        if f"bpb_{data}" in df.columns:
            bpb = pd.to_numeric(df[f"bpb_{data}"], errors="coerce")
            out.loc[stopped, f"bpb_{data}"] = (bpb * est / old)[stopped]
        _full_set_se(df, out, stopped, data)
        notes.append(f"{int(stopped.sum())} cell(s) stopped early by `eval.target_se` (`subset_{data}` < 1): "
                     f"fitted on `{paired}` (16-bit full-set NLL + paired `dnll_{data}`), not their subset's `{nll}`")
    return out, notes


def _full_set_se(df: pd.DataFrame, out: pd.DataFrame, stopped: pd.Series, data: str) -> None:
    se_col, d_col = f"nll_{data}_se", f"dnll_{data}_se"
    if se_col not in df.columns or d_col not in df.columns or "bits" not in df.columns:
        return
    key = checkpoint_key(df)
    ref = df[pd.to_numeric(df["bits"], errors="coerce") >= 16]
    ref_se = pd.Series(pd.to_numeric(ref[se_col], errors="coerce").to_numpy(), index=key[ref.index])
    ref_se = ref_se.groupby(level=0).first()
    ref_for = key[stopped].map(ref_se)
    have = ref_for.notna()
    idx = ref_for.index[have]
    dse = pd.to_numeric(df.loc[idx, d_col], errors="coerce").to_numpy(float)
    out.loc[idx, se_col] = np.hypot(ref_for[have].to_numpy(float), dse)


__all__ = ["CHECKPOINT_COLUMNS", "NOISE_KIND_WORDS", "PAIRED_KIND", "checkpoint_key", "difference_noise",
           "pairwise_paired_se", "paired_noise", "paired_se_column", "use_paired_estimates"]
