"""Degenerate points: find them, say how many and why, and keep them out of fits.

The k-bit paper (Dettmers & Zettlemoyer 2022, App.) plots perplexity as cross-entropy clipped at
ppl = 100 and treats anything above as an unstable/random model (3-bit OPT and Pythia reach
ppl > 100,000); zero-shot accuracy of collapsed models sits at chance (about 35 % averaged over
LAMBADA, PIQA, HellaSwag, WinoGrande). In a log-space Huber fit such points are not noise but a
different regime, so they are masked (default) or clipped, and a warning says how many.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: ppl above this counts as a failed (collapsed) model, as in the k-bit paper's appendix plots.
MAX_PPL = 100.0

#: Chance accuracy per task (LAMBADA is open-ended: 0; PIQA and WinoGrande binary; HellaSwag 4-way).
CHANCE_ACCURACY = {"lambada": 0.0, "piqa": 0.5, "winogrande": 0.5, "hellaswag": 0.25}
CHANCE_ACCURACY["mean"] = sum(CHANCE_ACCURACY.values()) / len(CHANCE_ACCURACY)

#: Accuracy within this of chance counts as "at chance".
CHANCE_MARGIN = 0.02

DEGENERATE_MODES = ("mask", "clip", "keep")
#: Metrics that are a difference to the same checkpoint's 16-bit model (``add_delta``'s ``delta_*``,
#: the evaluation's paired ``dnll_*`` and ``kl_*``): zero at 16 bit, fitted in log space where > 0.
PAIRED_KINDS = ("delta", "dnll", "kl")


class DegeneratePointsWarning(UserWarning):
    """Rows were masked or clipped before a fit or frontier."""


@dataclass(frozen=True)
class CleanReport:
    """What :func:`clean_points` did: counts per reason and the mode used."""

    n_in: int
    n_out: int
    reasons: dict
    mode: str

    @property
    def n_dropped(self) -> int:
        return self.n_in - self.n_out

    def message(self) -> str:
        parts = [f"{n} {why}" for why, n in self.reasons.items() if n]
        return "; ".join(parts) if parts else "none"


def metric_kind(metric: str) -> str:
    """``nll``, ``ppl``, ``acc`` ... : the part of ``{metric}_{dataset}`` before the first underscore."""
    return metric.split("_", 1)[0]


def _chance(metric: str) -> float | None:
    if metric_kind(metric) not in ("acc",):
        return None
    suffix = metric.split("_")[-1]
    return CHANCE_ACCURACY.get(suffix)


def clean_points(
    df: pd.DataFrame,
    y: str,
    *,
    columns: tuple[str, ...] = (),
    degenerate: str = "mask",
    max_ppl: float = MAX_PPL,
    chance: float | None = None,
    warn: bool = True,
) -> tuple[pd.DataFrame, CleanReport]:
    """Rows usable for fitting ``y``, with degenerate points masked or clipped.

    Always dropped: ``status`` other than ``ok``; NaN/inf in ``y`` or in ``columns``; non-positive
    values in ``columns`` (the laws take logs of them). Depending on ``degenerate``:

    * ``"mask"`` (default): drop collapsed models — ``ppl > max_ppl`` (for ``nll_*``/``ppl_*``/
      ``bpb_*`` metrics, via the ``ppl_`` column of the same dataset or ``exp(nll)``) and accuracy
      within ``CHANCE_MARGIN`` of chance (``acc_*``; chance from the task, or ``chance``);
    * ``"clip"``: cap cross-entropy at ``log(max_ppl)`` (``ppl`` at ``max_ppl``) as the paper's plots do;
    * ``"keep"``: leave them in (for inspection only).

    Args:
        df: a results table.
        y: the metric column.
        columns: other columns that must be finite and positive.
        degenerate: one of ``DEGENERATE_MODES``.
        max_ppl: perplexity above which a model counts as failed.
        chance: chance accuracy for an ``acc_*`` metric (default: from the task name).
        warn: emit a :class:`DegeneratePointsWarning` when anything was removed or clipped.

    Returns:
        (clean DataFrame with a fresh index, CleanReport).
    """
    if degenerate not in DEGENERATE_MODES:
        raise ValueError(f"degenerate must be one of {DEGENERATE_MODES}; got {degenerate!r}")
    if y not in df.columns:
        raise ValueError(f"metric column {y!r} is not in the results table; columns: {sorted(df.columns)}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} needed for the fit are not in the results table")
    n_in = len(df)
    reasons: dict[str, int] = {}
    keep = np.ones(n_in, dtype=bool)

    if "status" in df.columns:
        bad = (df["status"].astype(str) != "ok").to_numpy()
        reasons["rows with status != ok"] = int(bad.sum())
        keep &= ~bad
    vals = pd.to_numeric(df[y], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(vals) & keep
    reasons[f"rows with non-finite {y}"] = int(bad.sum())
    keep &= ~bad
    for c in columns:
        cv = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(cv) & (cv > 0)) & keep
        if bad.any():
            reasons[f"rows with missing/non-positive {c}"] = int(bad.sum())
        keep &= ~bad

    out_vals = vals.copy()
    kind = metric_kind(y)
    if kind in PAIRED_KINDS:
        # A degradation law is fitted in log space, so it sees only cells that degraded; the 16-bit
        # baselines (Δ = 0) and cells within noise of their baseline (Δ <= 0) carry no log value.
        base = y[len("delta_"):] if kind == "delta" else "nll_" + y.split("_", 1)[1]
        sign = -1.0 if metric_kind(base) in ("acc", "top1") else 1.0
        if "bits" in df.columns:  # the baselines themselves: Δ = 0 by definition, dropped silently
            keep &= ~(pd.to_numeric(df["bits"], errors="coerce").to_numpy(dtype=float) >= 16)
        with np.errstate(invalid="ignore"):
            flat = ~(sign * vals > 0) & keep
        if flat.any():
            reasons[f"cells with no degradation ({y} {'>=' if sign < 0 else '<='} 0, within noise of the "
                    "16-bit baseline)"] = int(flat.sum())
        keep &= ~flat
        if metric_kind(base) in ("nll", "ppl", "bpb") and base in df.columns and degenerate == "mask":
            # Masked: cells that quantization collapsed (ppl above the cut-off while their own 16-bit
            # checkpoint is below it). An early checkpoint that is near-random at 16 bit already
            # (ppl > cut-off) is not collapsed by quantization; its small degradation is kept.
            bv = pd.to_numeric(df[base], errors="coerce").to_numpy(dtype=float)
            with np.errstate(invalid="ignore", over="ignore"):
                q_ppl = _perplexity(df, base, bv)
                # the 16-bit model's ppl: known from a difference of the metric itself (ΔL, dnll), not from KL
                b_ppl = ({"nll": np.exp(bv - vals), "ppl": bv - vals}.get(metric_kind(base)) if kind != "kl" else None)
                b_ppl = np.full_like(bv, np.nan) if b_ppl is None else b_ppl
                collapsed = (q_ppl > max_ppl) & ~(b_ppl > max_ppl) & keep
            reasons[f"models collapsed by quantization (ppl > {max_ppl:g}, k-bit paper's cut-off) masked"] = int(collapsed.sum())
            keep &= ~collapsed
    if kind in ("nll", "ppl", "bpb") and degenerate != "keep":
        ppl = _perplexity(df, y, vals)
        with np.errstate(invalid="ignore"):
            collapsed = (ppl > max_ppl) & keep
        if degenerate == "mask":
            reasons[f"collapsed models (ppl > {max_ppl:g}, k-bit paper's cut-off) masked"] = int(collapsed.sum())
            keep &= ~collapsed
        else:
            reasons[f"collapsed models clipped at ppl = {max_ppl:g}"] = int(collapsed.sum())
            cap = {"nll": math.log(max_ppl), "ppl": max_ppl, "bpb": None}[kind]
            if cap is None:  # bits per byte: scale so that ppl is capped
                cap_arr = vals * math.log(max_ppl) / np.log(np.maximum(ppl, 1.0 + 1e-12))
                out_vals = np.where(collapsed, cap_arr, out_vals)
            else:
                out_vals = np.where(collapsed, cap, out_vals)
    elif kind == "acc" and degenerate != "keep":
        ch = chance if chance is not None else _chance(y)
        if ch is not None:
            at_chance = (vals <= ch + CHANCE_MARGIN) & keep
            if degenerate == "mask":
                reasons[f"accuracy at chance (<= {ch:.3f} + {CHANCE_MARGIN}) masked"] = int(at_chance.sum())
                keep &= ~at_chance
            else:
                reasons[f"accuracy at chance clipped to {ch:.3f}"] = int(at_chance.sum())
                out_vals = np.where(at_chance, ch, out_vals)

    out = df.loc[keep].copy()
    out[y] = out_vals[keep]
    out = out.reset_index(drop=True)
    report = CleanReport(n_in=n_in, n_out=len(out), reasons={k: v for k, v in reasons.items() if v}, mode=degenerate)
    if report.reasons:
        msg = f"{y}: {report.n_dropped} of {n_in} rows excluded, {report.message()}"
        if warn:  # one warning (no second log line saying the same); the report says each exclusion once
            warnings.warn(msg, DegeneratePointsWarning, stacklevel=2)
        else:  # the caller reports it (or already did): repeating it per law and per resample is noise
            log.debug(msg)
    return out, report


def _perplexity(df: pd.DataFrame, y: str, vals: np.ndarray) -> np.ndarray:
    """ppl of each row for a perplexity-like metric ``y`` (prefers the row's own ``ppl_`` column)."""
    kind, _, dataset = y.partition("_")
    ppl_col = f"ppl_{dataset}"
    if kind == "ppl":
        return vals
    if ppl_col in df.columns:
        ppl = pd.to_numeric(df[ppl_col], errors="coerce").to_numpy(dtype=float)
        if kind == "nll":  # rows without a ppl column value: exp(nll)
            with np.errstate(over="ignore"):
                ppl = np.where(np.isfinite(ppl), ppl, np.exp(vals))
        return ppl
    if kind == "nll":
        with np.errstate(over="ignore"):
            return np.exp(vals)
    return np.full_like(vals, np.nan)  # bpb without ppl: cannot tell, never masked
