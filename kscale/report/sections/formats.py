"""Which storage format at which size (issue 18 §4): rankings at fixed budgets and one offset law.

Runs when the study holds more than one storage format (blockwise data types count one each:
``nf-B64``, ``float-B64``; GGUF and MX types by name). Two answers, from two readings:

* measured: at each total-bits budget, each format's best cell within it, ranked, with the
  bootstrap probability that it is best (cells perturbed by their paired noise
  ``d<metric>_se`` when present -- every cell is scored on the same tokens, so the unpaired
  ``<metric>_se`` would blur differences that are real -- else ``<metric>_se``, else the law's
  residual scale);
* the law: ln(L - E) = a - alpha ln(total_bits) + c_format (:mod:`kscale.fit.formats`), one
  constant per format with a bootstrap interval, and what it is worth in bits.

Both read only weights-only rows (act_bits = kv_bits = 16): a runtime-precision cell at the same
weight bits is a different experiment, not a format effect.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kscale.fit.core import higher_is_better
from kscale.fit.formats import fit_format_offsets, format_key, quantized_rows, rank_formats, weights_only
from kscale.plots.style import log_axis, metric_label, plt
from kscale.report.context import FamilyContext, SectionOutput
from kscale.report.text import fmt

#: rows of the ranking table shown per budget (the full table is in the section's table)
TOP_PER_BUDGET = 3


def _formats_in(rows: pd.DataFrame) -> list[str]:
    ok = rows[rows["status"].astype(str) == "ok"] if "status" in rows.columns else rows
    ok = weights_only(ok)
    ok = ok[pd.to_numeric(ok.get("bits"), errors="coerce") < 16] if "bits" in ok.columns else ok.iloc[:0]
    return sorted({format_key(r) for _, r in ok.iterrows()})


def _noise(rows: pd.DataFrame, metric: str, residual: float | None, E: float) -> tuple[np.ndarray | float | None, str]:
    q = quantized_rows(rows, metric)
    for col in (f"d{metric}_se", f"{metric}_se"):
        if col in q.columns:
            se = pd.to_numeric(q[col], errors="coerce").to_numpy(float)
            if np.isfinite(se).all() and (se > 0).all():
                return se, f"`{col}` of the rows"
    if residual is not None:
        y = pd.to_numeric(q[metric]).to_numpy(float)
        return residual * np.maximum(y - E, 0.0), "the offset law's residual scale (the rows carry no SE)"
    return None, "unknown"


def formats_section(ctx: FamilyContext) -> SectionOutput:
    out = SectionOutput()
    rows, metric = ctx.law_rows, ctx.metric
    if "format" not in rows.columns or len(_formats_in(rows)) < 2:
        return out
    md = out.markdown
    md += ["### Which format at which size", "",
           "Formats on one total-bits frontier (weights-only rows: act_bits = kv_bits = 16). Blockwise data types "
           "count as one format each (`nf-B64`: NormalFloat, blocks of 64, every k); GGUF and MX types by name.", ""]
    lower = not higher_is_better(metric)
    fit = None
    if lower:
        try:
            fit = fit_format_offsets(rows, metric, E=ctx.known_E, n_bootstrap=ctx.options.n_bootstrap,
                                     seed=ctx.options.seed)
        except ValueError as e:
            out.problems.append(f"{ctx.family}: format offset law: {e}")
    noise, words = _noise(rows, metric, fit.residual_sd if fit else None, fit.E if fit else 0.0)
    try:
        ranking = rank_formats(rows, metric, ctx.options.budgets, noise=noise, n_bootstrap=ctx.options.n_bootstrap,
                               seed=ctx.options.seed, higher_is_better=not lower)
    except ValueError as e:
        out.problems.append(f"{ctx.family}: format ranking: {e}")
        return out
    out.table = ranking.table
    md += [f"**Ranking at each budget** (best measured cell within the budget; P(best) over "
           f"{ranking.n_bootstrap} bootstrap draws, noise: {words}):", "",
           "| budget (bits) | 1st | 2nd | 3rd | formats |", "|---|---|---|---|---|"]
    for b, grp in ranking.table.groupby("budget", sort=True):
        top = grp.sort_values("rank").head(TOP_PER_BUDGET)
        cells = [f"{r.format} ({fmt(r.value)}, P={fmt(r.p_best)})" for r in top.itertuples()]
        cells += [""] * (TOP_PER_BUDGET - len(cells))
        md.append(f"| {b:.3g} | " + " | ".join(cells) + f" | {len(grp)} |")
    md.append("")
    if fit is not None:
        md += _law_markdown(fit)
        out.answer = _answer(fit, ranking)
        _figure(ctx, out, rows, metric, fit)
    elif not lower:
        md += [f"The offset law is fitted to loss-like metrics; `{metric}` is higher-is-better.", ""]
    return out


def _law_markdown(fit) -> list[str]:
    E = f"E = {fmt(fit.E)} ({'known' if fit.E_known else 'profiled'})"
    lines = [f"**One law, one constant per format**: ln(L - E) = a - α ln(total bits) + c_format, {E}, "
             f"α = {fmt(fit.alpha)}, residual SD {fmt(fit.residual_sd)} in ln(L - E), {fit.n_rows} rows; "
             f"reference `{fit.reference}` (c = 0). c < 0 is better; `bits worth` = exp(-c/α): one bit of the format "
             "does what that many bits of the reference do. Intervals: 95 % bootstrap over rows.", "",
             "| format | c_format | 95 % interval | bits worth | sizes |", "|---|---|---|---|---|"]
    for r in fit.table().itertuples():
        lines.append(f"| {r.format} | {fmt(r.c_format)} | [{fmt(r.c_low)}, {fmt(r.c_high)}] | {fmt(r.bits_worth)} "
                     f"| {r.sizes} |")
    single = sorted(set(fit.offsets) - set(fit.comparable()))
    if single:
        lines.append(f"\nMeasured at one size only (its rows elsewhere failed or were not run): "
                     f"{', '.join(f'`{f}`' for f in single)}; such a c also holds that size's deviation from the "
                     "base curve, so it is not compared in the answer.")
    if fit.dropped:
        lines.append(f"\n({fit.dropped} rows at or below E left out of the law.)")
    return lines + [""]


def _answer(fit, ranking) -> str:
    table = fit.table()
    table = table[table["format"].isin(fit.comparable())]
    best = table.iloc[0]
    wins = ranking.table[ranking.table["rank"] == 1]["format"].value_counts()
    most = f"; first at {wins.iloc[0]} of {ranking.table['budget'].nunique()} budgets: `{wins.index[0]}`" if len(wins) else ""
    lo, hi = fit.intervals.get(best.format, (math.nan, math.nan))
    return (f"Formats: `{best.format}` has the lowest offset (c = {fmt(best.c_format)} [{fmt(lo)}, {fmt(hi)}] vs "
            f"`{fit.reference}`, worth {fmt(best.bits_worth)} of its bits){most}.")


def _figure(ctx: FamilyContext, out: SectionOutput, rows: pd.DataFrame, metric: str, fit) -> None:
    q = quantized_rows(rows, metric)
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab20")
    for i, (f, g) in enumerate(sorted(q.groupby("format_key"), key=lambda kv: fit.offsets.get(kv[0], 0.0))):
        color = cmap(i % 20)
        g = g.sort_values("total_bits")
        ax.scatter(g["total_bits"], g[metric], s=14, color=color, label=f"{f} (c={fmt(fit.offsets.get(f))})")
        xs = np.geomspace(g["total_bits"].min(), g["total_bits"].max(), 40)
        if f in fit.offsets:
            ax.plot(xs, fit.predict(xs, [f] * len(xs)), color=color, lw=1)
    log_axis(ax, "x")
    ax.set_xlabel("total model bits")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{ctx.family}: formats on one frontier, one law + c_format")
    ax.legend(fontsize=6, ncol=2)
    ctx.save(out, fig, "formats")
    plt.close(fig)
