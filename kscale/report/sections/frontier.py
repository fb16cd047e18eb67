"""The best measured configuration per stretch of total-bits budgets (no law involved)."""
from __future__ import annotations

import numpy as np

from kscale.fit.noise import noise_words
from kscale.fit.paired_noise import paired_se_column
from kscale.pareto import NOISE_SE, frontier_segments
from kscale.report.context import FamilyContext, SectionOutput
from kscale.report.text import fmt


def frontier_section(ctx: FamilyContext) -> SectionOutput:
    out = SectionOutput()
    try:
        seg = frontier_segments(ctx.law_rows, ctx.metric)
    except (ValueError, KeyError) as e:
        out.problems.append(f"{ctx.family}: frontier: {e}")
        return out
    if seg.empty:
        return out
    seg.insert(0, "family", ctx.family)
    out.table = seg
    out.markdown += ["### Best measured configuration per total-bits budget", "",
                     "One row per stretch of budgets with the same best measured configuration (and size). The "
                     "runner-up is the best *other* configuration at the stretch's largest budget, where it comes "
                     "closest.", "",
                     "| budget from (bits) | to | best | value | runner-up | margin |", "|---|---|---|---|---|---|"]
    for _, r in seg.iterrows():
        out.markdown.append(f"| {r['budget_from']:.3g} | {r['budget_to']:.3g} | {r['best_config']} ({r.get('best_size')}) | "
                            f"{fmt(r['best_value'])} | {r['runner_up_config']} | {_margin(r)} |")
    out.markdown += ["", _noise_sentence(ctx, seg), ""]
    return out


def _noise_sentence(ctx: FamilyContext, seg) -> str:
    """Which noise each margin is judged by: a winner and runner-up of one checkpoint differ by a
    paired difference on the same tokens; of two sizes, by two independent evaluations."""
    if "margin_se" not in seg.columns:
        return f"Evaluation noise: {noise_words(ctx.law_rows, ctx.metric)}; margins cannot be judged against it."
    paired = paired_se_column(ctx.law_rows, ctx.metric)
    words = (f"margins marked *(paired)* compare two cells of one checkpoint on the same tokens and use the paired SE "
             f"of their difference (`{paired}`; two quantized cells: the conservative bound hypot(se1, se2), as their "
             "differences to the 16-bit model are positively correlated); the others compare different sizes and "
             f"use the absolute SEs in quadrature ({noise_words(ctx.law_rows, ctx.metric)})" if paired else
             f"margins use the two rows' absolute SEs in quadrature ({noise_words(ctx.law_rows, ctx.metric)}; "
             "the rows carry no paired SE)")
    return f"Evaluation noise: {words}; a margin below {NOISE_SE:g} SE is marked *within noise*."


def _margin(r) -> str:
    m, se = r.get("margin"), r.get("margin_se")
    if se is None or not np.isfinite(se) or m is None or not np.isfinite(m):
        return fmt(m)
    kind = " *(paired)*" if r.get("margin_noise") == "paired" else ""
    return f"{fmt(m)} ± {fmt(se)}{kind}" + (" *within noise*" if m < NOISE_SE * se else "")
