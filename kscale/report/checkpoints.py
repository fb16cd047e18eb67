"""Studies over training tokens: which rows the size laws read, and which the degradation laws read.

Loss laws are laws of size at one training recipe; mixing a size's early and final checkpoints
would read undertraining as a size effect, so they get each size's last checkpoint. Degradation
laws (``qid``, ``ptq``) compare like with like: one quantization configuration's ΔL across
checkpoints, against each checkpoint's own 16-bit row.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from kscale.report.inputs import is_degradation_metric

_CONFIG_COLUMNS = ("method", "format", "dtype", "blocksize")


def has_token_axis(df: pd.DataFrame) -> bool:
    """More than one distinct ``n_tokens`` for some size: the study measured training length."""
    if "n_tokens" not in df.columns:
        return False
    known = df[pd.to_numeric(df["n_tokens"], errors="coerce").notna()]
    size = "n_params" if "n_params" in known.columns else "size"
    return bool(len(known)) and int(known.groupby(size)["n_tokens"].nunique().max()) > 1


def final_checkpoints(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of each size's checkpoint with the most training tokens (rows with unknown tokens kept)."""
    size = "n_params" if "n_params" in df.columns else "size"
    d = pd.to_numeric(df["n_tokens"], errors="coerce")
    last = d.groupby(df[size]).transform("max")
    return df[d.isna() | (d == last)].reset_index(drop=True)


def degradation_column(metric: str) -> str:
    """The column a degradation law fits for ``metric``: ``dnll_*``/``kl_*`` are already paired
    differences to the 16-bit row; any other metric becomes ``delta_<metric>`` (``add_delta``)."""
    return metric if is_degradation_metric(metric) else f"delta_{metric}"


def with_degradation(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``df`` with the degradation column of ``metric`` (and its ``_se`` when the rows carry one:
    ΔL of an NLL *is* the paired ``dnll``, so ``dnll_<data>_se`` is its standard error)."""
    from kscale.results import add_delta

    y = degradation_column(metric)
    if y in df.columns:
        return df
    out = add_delta(df, metric)
    data = metric.split("_", 1)[1] if "_" in metric else ""
    if metric.startswith("nll_") and f"dnll_{data}_se" in out.columns and f"{y}_se" not in out.columns:
        out[f"{y}_se"] = out[f"dnll_{data}_se"]
    return out


def degradation_configs(df: pd.DataFrame, metric: str) -> list[dict]:
    """Quantization configurations (method, dtype, block size) of the quantized cells with a
    degradation, most measured first (ties in table order), e.g. ``[{"method": "rtn", "dtype": "int", ...}]``."""
    out = with_degradation(df, metric)
    y = degradation_column(metric)
    cols = [c for c in _CONFIG_COLUMNS if c in out.columns]
    quant = out[(out["bits"].astype(float) < 16) & pd.to_numeric(out[y], errors="coerce").notna()]
    if quant.empty or not cols:
        return []
    counts = quant.groupby(cols, dropna=False, sort=False).size().sort_values(ascending=False, kind="stable")
    return [dict(zip(cols, k if isinstance(k, tuple) else (k,))) for k in counts.index]


def degradation_rows(df: pd.DataFrame, metric: str, config: dict | None = None) -> tuple[pd.DataFrame, str]:
    """``df`` with its degradation column (:func:`degradation_column`), restricted to the 16-bit
    baselines and one quantization configuration (default: the most measured one), and a phrase
    naming that configuration. Degradation laws compare like with like: one data type's ΔL
    across checkpoints, not a mix whose composition changes along D."""
    out = with_degradation(df, metric)
    configs = degradation_configs(out, metric)
    if not configs:
        return out, "all quantized cells"
    cfg = configs[0] if config is None else config
    base = (out["bits"].astype(float) >= 16).to_numpy()
    keep = np.ones(len(out), dtype=bool)
    for c, v in cfg.items():
        keep &= (out[c] == v).to_numpy() | base
    phrase = " ".join(f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}" for c, v in cfg.items())
    if config is None and len(configs) > 1:
        phrase += f" (the most measured of {len(configs)} configurations)"
    return out[keep].reset_index(drop=True), phrase
