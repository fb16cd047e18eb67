"""The evaluation noise of a metric, from what the rows carry.

``<metric>_se`` (the evaluation team's standard errors: ``nll_<data>_se``, ``dnll_<data>_se``,
``kl_<data>_se``, ``flips_<task>_se``, and ``acc_*_stderr`` from lm-eval-style tasks). Rows without
them: the noise is unknown, and the report says so instead of guessing.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def se_column(df: pd.DataFrame, metric: str) -> str | None:
    """The column holding ``metric``'s standard error in ``df``, or None."""
    for c in (f"{metric}_se", f"{metric}_stderr"):
        if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any():
            return c
    return None


def noise_of(df: pd.DataFrame, metric: str) -> np.ndarray | None:
    """Per-row standard error of ``metric`` (NaN where a row has none), or None without a column."""
    col = se_column(df, metric)
    return None if col is None else pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


def noise_words(df: pd.DataFrame, metric: str) -> str:
    """How the report knows the noise, for a sentence."""
    col = se_column(df, metric)
    return f"`{col}` of the rows" if col else f"unknown (the rows carry no `{metric}_se`)"
