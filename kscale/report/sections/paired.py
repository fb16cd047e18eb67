"""Paired statistics against the 16-bit model: does KL say what perplexity and task scores say?

Across the study's quantized cells (issue 19 §3): the rank correlation (Spearman) between mean KL
to the 16-bit model and ``dnll`` = ln(PPL_q / PPL_16) on the same tokens, and between KL and
zero-shot ``flips_<task>`` (share of items whose correctness changed; Dutta et al. 2024). Near
the 16-bit model the link between KL and task scores collapses (Nikolić et al. 2026, "Displacement
is not direction"): the section finds the largest set of lowest-KL cells within which KL does not
rank the flips (ρ < :data:`RANKS_FLIPS`) and flags those cells: their KL is too small to predict
task scores. Without the paired columns the section says what it would need.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from kscale import plots
from kscale.report.context import FamilyContext, SectionOutput
from kscale.report.inputs import metric_columns
from kscale.report.text import fmt

#: Below this Spearman ρ, KL does not rank the flips of the cells it is computed over.
RANKS_FLIPS = 0.5
#: Fewest cells a rank correlation is computed over.
MIN_CELLS = 5


def _cells(rows: pd.DataFrame) -> pd.DataFrame:
    ok = rows[rows["status"].astype(str) == "ok"] if "status" in rows.columns else rows
    return ok[ok["bits"].astype(float) < 16] if "bits" in ok.columns else ok


def _datasets(rows: pd.DataFrame) -> list[str]:
    return sorted(c[3:] for c in metric_columns(rows) if c.startswith("kl_"))


def _dnll(rows: pd.DataFrame, data: str) -> pd.Series | None:
    """``dnll_<data>`` from the rows, else ln(PPL_q/PPL_16) from ``add_delta`` on ``nll_<data>``."""
    if f"dnll_{data}" in rows.columns:
        return pd.to_numeric(rows[f"dnll_{data}"], errors="coerce")
    if f"nll_{data}" in rows.columns:
        from kscale.results import add_delta

        return pd.to_numeric(add_delta(rows, f"nll_{data}")[f"delta_nll_{data}"], errors="coerce")
    return None


def _rho(a: pd.Series, b: pd.Series) -> tuple[float, float, int]:
    m = a.notna() & b.notna()
    if m.sum() < 3:
        return math.nan, math.nan, int(m.sum())
    r = spearmanr(a[m], b[m])
    return float(r.statistic), float(r.pvalue), int(m.sum())


def low_kl_cells(kl: pd.Series, flips: pd.Series) -> tuple[pd.Index, float]:
    """(index of the cells whose KL is too small to predict flips, the KL below which they lie).

    The largest set of lowest-KL cells (at least :data:`MIN_CELLS`) within which the Spearman ρ of
    KL and flips stays below :data:`RANKS_FLIPS`; empty when KL ranks the flips from the start.
    """
    m = kl.notna() & flips.notna()
    order = kl[m].sort_values(kind="stable").index
    flagged = pd.Index([])
    for n in range(MIN_CELLS, len(order) + 1):
        head = order[:n]
        rho = spearmanr(kl[head], flips[head]).statistic
        if not (np.isfinite(rho) and rho >= RANKS_FLIPS):
            flagged = head
    return flagged, (float(kl[flagged].max()) if len(flagged) else math.nan)


def paired_section(ctx: FamilyContext) -> SectionOutput:
    out = SectionOutput()
    rows = ctx.rows
    datasets = _datasets(rows)
    if not datasets:
        return out
    md = out.markdown
    md += ["### Paired statistics against the 16-bit model", "",
           "Across the quantized cells: Spearman rank correlation of mean KL to the 16-bit model with "
           "dnll = ln(PPL_q/PPL_16) on the same tokens, and with zero-shot flips (share of items whose correctness "
           "changed); near the 16-bit model KL stops predicting task scores (Nikolić et al. 2026).", "",
           "| KL on | against | Spearman ρ | p | cells |", "|---|---|---|---|---|"]
    cells = _cells(rows)
    flip_cols = [c for c in cells.columns if c.startswith("flips_") and not c.endswith(("_se", "_stderr"))
                 and pd.to_numeric(cells[c], errors="coerce").notna().any()]
    notes = []
    for data in datasets:
        kl = pd.to_numeric(cells[f"kl_{data}"], errors="coerce")
        dn = _dnll(rows, data)
        if dn is not None:
            r, p, n = _rho(kl, dn.loc[cells.index])
            md.append(f"| {data} | dnll_{data} | {fmt(r)} | {fmt(p)} | {n} |")
        for fc in flip_cols:
            flips = pd.to_numeric(cells[fc], errors="coerce")
            r, p, n = _rho(kl, flips)
            md.append(f"| {data} | {fc} | {fmt(r)} | {fmt(p)} | {n} |")
            low, kappa = low_kl_cells(kl, flips)
            if len(low):
                names = ", ".join(_cell_name(cells.loc[i]) for i in low)
                notes.append(f"KL on {data} is too small to predict `{fc}` for the {len(low)} cells with KL ≤ "
                             f"{fmt(kappa)} (within them ρ < {RANKS_FLIPS:g}): {names}.")
    md.append("")
    if not flip_cols:
        notes.append("No `flips_<task>` columns: the study scored no zero-shot task paired with its 16-bit model, "
                     "so whether KL predicts task scores cannot be said.")
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    try:
        ctx.save(out, plots.plot_paired(cells.assign(**{f"dnll_{d}": _dnll(rows, d) for d in datasets
                                                        if _dnll(rows, d) is not None}),
                                        datasets[0], flip_cols, title=f"{ctx.family}: KL against dnll and flips"),
                 "paired")
    except ValueError as e:
        out.problems.append(f"{ctx.family}: paired figure: {e}")
    return out


def _cell_name(r: pd.Series) -> str:
    parts = [str(r.get("size", "")), f"{r.get('dtype', '')}", f"{float(r['bits']):g}-bit" if "bits" in r else ""]
    return " ".join(p for p in parts if p and p != "nan")
