"""The best measured configuration per stretch of total-bits budgets (no law involved)."""
from __future__ import annotations

import numpy as np

from kscale.fit.noise import noise_words
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
    out.markdown += ["", f"Evaluation noise: {noise_words(ctx.law_rows, ctx.metric)}"
                     + ("; a margin below 2 SE is marked *within noise*." if "margin_se" in seg.columns else
                        "; margins cannot be judged against it."), ""]
    return out


def _margin(r) -> str:
    m, se = r.get("margin"), r.get("margin_se")
    if se is None or not np.isfinite(se) or m is None or not np.isfinite(m):
        return fmt(m)
    return f"{fmt(m)} ± {fmt(se)}" + (" *within noise*" if m < NOISE_SE * se else "")
