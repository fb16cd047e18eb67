"""The best measured configuration per stretch of total-bits budgets (no law involved)."""
from __future__ import annotations

from kscale.pareto import frontier_segments
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
                            f"{fmt(r['best_value'])} | {r['runner_up_config']} | {fmt(r['margin'])} |")
    out.markdown.append("")
    return out
