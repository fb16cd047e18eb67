"""Where one precision overtakes the next along total model bits (measured curves, no law)."""
from __future__ import annotations

from kscale.pareto import crossover
from kscale.report.context import FamilyContext, SectionOutput
from kscale.report.text import bits_label


def crossover_section(ctx: FamilyContext) -> SectionOutput:
    out = SectionOutput()
    sub, metric = ctx.law_rows, ctx.metric
    if "bits" not in sub.columns:
        return out
    ok = sub[sub["status"].astype(str) == "ok"] if "status" in sub.columns else sub
    ks = sorted(k for k in ok["bits"].dropna().astype(float).unique())
    cross = [crossover(sub, metric, a, b) for a, b in zip(ks[:-1], ks[1:])]
    if cross:
        out.markdown += ["Crossovers (k-bit vs the next precision up, interpolated in log total bits): " + "; ".join(
            f"{bits_label(c.low_bits)} vs {bits_label(c.high_bits)}: {c.status}"
            + (f" at {c.total_bits:.3g} bits" if c.total_bits else "") for c in cross), ""]
    return out
