"""Where precisions change order along total model bits (measured curves, no law).

Each pair of neighbouring precisions is compared at every total-bits value of either curve inside
the range both measured (best row per size, linear in log total bits); every change of order is
reported with its budget, and margins within the evaluation noise are marked (issue 17 §3): the
last sign change alone misleads when the curves cross several times. At one budget the two curves
are different model sizes, so those margins use the absolute SEs; the same pair is also compared
at equal size, where both cells share a checkpoint and its tokens and the paired SE applies.
"""
from __future__ import annotations

from kscale.fit.noise import noise_words
from kscale.fit.paired_noise import paired_se_column
from kscale.pareto import NOISE_SE, compare_at_equal_size, compare_precisions
from kscale.report.context import FamilyContext, SectionOutput
from kscale.report.text import bits_label, fmt


def crossover_section(ctx: FamilyContext) -> SectionOutput:
    out = SectionOutput()
    sub, metric = ctx.law_rows, ctx.metric
    if "bits" not in sub.columns:
        return out
    ok = sub[sub["status"].astype(str) == "ok"] if "status" in sub.columns else sub
    ks = sorted(k for k in ok["bits"].dropna().astype(float).unique())
    comps = [compare_precisions(sub, metric, a, b) for a, b in zip(ks[:-1], ks[1:])]
    if not comps:
        return out
    lines = []
    for c in comps:
        lines.append(f"- {_pair_sentence(c)}")
        same = _equal_size_sentence(compare_at_equal_size(sub, metric, c.low_bits, c.high_bits), c)
        if same:
            lines.append(f"  - {same}")
    out.markdown += ["### Order of neighbouring precisions at equal total bits", "",
                     "Each pair compared at every total-bits value of either curve inside the range both measured "
                     "(best row per size; the other curve interpolated in log total bits, as the paper draws them). "
                     f"Evaluation noise at equal total bits (different sizes): the absolute SEs, {noise_words(sub, metric)}; "
                     "at equal size (one checkpoint, same tokens): "
                     + (f"the paired SE of the difference (`{paired_se_column(sub, metric)}`; two quantized cells: "
                        "the conservative bound hypot(se1, se2))" if paired_se_column(sub, metric) else
                        "the absolute SEs too (the rows carry no paired SE)")
                     + f". A margin below {NOISE_SE:g} SE is within noise.",
                     ""] + lines + [""]
    return out


def _pair_sentence(c) -> str:
    lo, hi = bits_label(c.low_bits), bits_label(c.high_bits)
    head = f"{lo}-bit vs {hi}-bit: "
    p = c.points
    if p.empty:
        return head + "no shared range of total bits."
    ahead_lo = int((p["difference"] < 0).sum())
    ahead_hi = int((p["difference"] > 0).sum())
    noisy = p["within_noise"].dropna()
    text = (head + f"{len(p)} budgets from {p['total_bits'].min():.3g} to {p['total_bits'].max():.3g} bits: "
            f"{lo}-bit ahead at {ahead_lo}, {hi}-bit at {ahead_hi}")
    if len(noisy):
        text += f"; {int(noisy.sum())} of the margins within noise"
    else:
        text += f"; margins {fmt(p['difference'].abs().min())} to {fmt(p['difference'].abs().max())}, noise unknown"
    if not c.changes:
        return text + "; the order never changes."
    parts = []
    for x, ahead, within in c.changes:
        mark = "" if within is None else (" (within noise)" if within else "")
        parts.append(f"{x:.3g} bits ({bits_label(ahead)}-bit ahead above){mark}")
    return text + f"; the order changes {len(c.changes)} time(s): at " + ", ".join(parts) + "."


def _equal_size_sentence(same, c) -> str:
    """How the pair compares at each size both measured, with the noise that comparison has."""
    if same.empty:
        return ""
    lo, hi = bits_label(c.low_bits), bits_label(c.high_bits)
    kinds = sorted(set(same["noise"].dropna()))
    text = (f"at equal size ({len(same)} size(s), noise: {' / '.join(kinds) or 'unknown'}): {lo}-bit better at "
            f"{int((same['difference'] < 0).sum())}, {hi}-bit at {int((same['difference'] > 0).sum())}")
    judged = same["within_noise"].dropna()
    if len(judged):
        text += (f"; {int((~judged.astype(bool)).sum())} of {len(judged)} resolved beyond {NOISE_SE:g} SE "
                 f"(|difference| {fmt(same['difference'].abs().min())} to {fmt(same['difference'].abs().max())}, "
                 f"SE {fmt(same['se'].min())} to {fmt(same['se'].max())})")
    return text + "."
