"""Figures of the measurements themselves: the Figure-1 view, block sizes, data types."""
from __future__ import annotations

from kscale import plots
from kscale.report.context import FamilyContext, SectionOutput


def measured_section(ctx: FamilyContext) -> SectionOutput:
    out = SectionOutput()
    sub, metric = ctx.rows, ctx.metric
    try:
        ctx.save(out, plots.plot_bits_scaling(sub, metric, title=f"{ctx.family}: {metric} vs total model bits",
                                              known_E=ctx.known_E), "bits-scaling")
        quant = sub[sub["bits"].astype(float) < 16] if "bits" in sub else sub.iloc[:0]
        at4 = quant[quant["bits"].astype(float) == 4]
        if "blocksize" in sub.columns and at4["blocksize"].nunique() > 1:
            ctx.save(out, plots.plot_ablation(sub, metric, "blocksize", bits=4), "blocksize")
        if "dtype" in sub.columns and quant["dtype"].nunique() > 1:
            ctx.save(out, plots.plot_config_difference(sub, metric, "dtype"), "dtype")
    except (ValueError, KeyError) as e:
        out.problems.append(f"{ctx.family}: figures: {e}")
    if ctx.token_axis:
        out.markdown += ["This study has checkpoints of each size at several training-token counts; the frontier and "
                         "law sections use each size's last checkpoint (largest `n_tokens`), the training-tokens "
                         "section all of them.", ""]
    return out
