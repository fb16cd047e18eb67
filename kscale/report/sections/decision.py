"""The answer: which precision is optimal per total-bits budget under the chosen law, how sure."""
from __future__ import annotations

import numpy as np
import pandas as pd

from kscale.fit import FitError, candidate_frame, fit_law
from kscale.fit.core import _target
from kscale.report.context import FamilyContext, SectionOutput, _n_sizes
from kscale.report.sections.law import applies, law_choice, law_fit
from kscale.fit.noise import noise_words
from kscale.report.form import FormCheck, effect_phrase, form_check
from kscale.report.text import bits_label, fmt, pct

#: Below this many model sizes a fit's decision probabilities are not reported: two sizes fix a
#: curve through two points, and the bootstrap then measures noise, not the law's uncertainty.
MIN_SIZES_FOR_DECISION = 3
#: P(optimal) below this is reported as "not decided".
DECIDED_P = 0.9


def budgets_for(ctx: FamilyContext, fit) -> list[float]:
    """The user's budgets, else 5 log-spaced over the fitted rows' total bits."""
    if ctx.options.budgets:
        return list(ctx.options.budgets)
    if "total_bits" not in fit.data:
        return []
    t = fit.data["total_bits"].astype(float)
    return list(np.geomspace(t.min(), t.max(), 5))


def decision_section(ctx: FamilyContext) -> SectionOutput:
    out = SectionOutput()
    if not applies(ctx) or ctx.n_sizes < 2:
        return out
    res = law_fit(ctx)
    fit, boot = res.fit, res.boot
    if fit is None or boot is None or "bits" not in fit.law_spec.needs:
        return out
    fam, md = ctx.family, out.markdown
    n_prec = fit.data["bits"].nunique() if "bits" in fit.data.columns else 0
    if n_prec < 2:
        out.problems.append(f"{fam}: only {n_prec} precision(s) left after cleaning: no optimal-bits decision")
        return out
    n_sizes = _n_sizes(fit.data)
    if n_sizes < MIN_SIZES_FOR_DECISION:
        msg = (f"{fam}: the fit rests on {n_sizes} model size(s); below {MIN_SIZES_FOR_DECISION} a law is a curve through "
               "as many points as it has sizes and its bootstrap probabilities would look confident without meaning it: "
               "no optimal-precision decision is reported")
        out.problems.append(msg)
        md += [f"Optimal precision: not reported ({msg.split(': ', 1)[1]}).", ""]
        return out
    bl = budgets_for(ctx, fit)
    try:
        dec = boot.decisions(bl)
    except ValueError as e:
        out.problems.append(f"{fam}: decisions: {e}")
        return out
    if dec.empty:
        return out
    pcols = [c for c in dec.columns if c.startswith("p_bits_")]
    md += ["### Optimal precision per budget (law + bootstrap)", "",
           "| total bits | optimal bits | P(optimal) | 95% interval of optimal bits | " + " | ".join(
               f"P({c[7:]}-bit)" for c in pcols) + " |", "|---" * (4 + len(pcols)) + "|"]
    for _, r in dec.iterrows():
        md.append(f"| {r['total_bits']:.3g} | {bits_label(r['best_bits'])} | {r['p_best']:.2f} | "
                  f"[{bits_label(r['bits_lo'])}, {bits_label(r['bits_hi'])}] | "
                  + " | ".join(f"{r[c]:.2f}" for c in pcols) + " |")
    md.append("")
    check = form_check(fit, boot, ctx.weight_rows, ctx.metric)
    full, lo, hi = check.effect
    if np.isfinite(full):
        md += [f"Precision effect under the law at the largest measured size (spread across k at equal size): "
               f"{effect_phrase(check)} in {ctx.metric}'s units; noise it must exceed: {fmt(check.tolerance)} "
               f"({check.noise or 'evaluation noise: ' + noise_words(ctx.law_rows, ctx.metric)}).", ""]
    md += [f"- {s}" for s in check.sentences] + ([""] if check.sentences else [])
    out.answer = answer_sentence(ctx, dec, bl, boot, check)
    return out


def answer_sentence(ctx: FamilyContext, dec: pd.DataFrame, budgets, boot, check: FormCheck) -> str:
    choice = law_choice(ctx)
    chosen, metric, score = choice.law, ctx.metric, choice.score
    parts = answer_parts(dec)
    decided = bool((dec["p_best"] >= DECIDED_P).all())
    lo, hi = bits_label(dec["bits_lo"].min()), bits_label(dec["bits_hi"].max())
    sentence = (f"{ctx.family}: under the `{chosen}` law fitted to {metric}, the optimal precision is " + "; ".join(parts)
                + f" (bootstrap probability over {boot.n_resamples} resamples; 95% interval of the optimal bits "
                f"[{lo}, {hi}]). ")
    flags = list(check.sentences)
    if not check.identified:
        sentence += flags.pop(0)
    elif decided:
        sentence += f"That is decided at the {DECIDED_P:.0%} level within the law."
    else:
        sentence += (f"That is not decided: the best precision has P < {DECIDED_P:.2f} at some budget, so other "
                     "precisions remain plausible.")
    if flags:
        sentence += " " + " ".join(flags)
    if score is not None and np.isfinite(score.error):
        sentence += (f" The law itself is uncertain beyond the bootstrap: fitted without the largest size it "
                     f"mispredicts that size's level by {pct(score.error)} on average"
                     + (f" and its precision effect by {pct(score.effect_error)}" if np.isfinite(score.effect_error) else "")
                     + ".")
    sentence += " " + choice.why
    alt = [p for p in (point_decisions(ctx.weight_rows, law, metric, budgets) for law in choice.others) if p]
    if alt:
        sentence += " The other laws' point fits say: " + "; ".join(alt) + "."
    return sentence


def point_decisions(df, law, metric, budgets) -> str | None:
    """What another law's full-data fit (no bootstrap) says is optimal at ``budgets``, as a phrase."""
    try:
        fit = fit_law(df, law, y=metric, warn=False)
    except (FitError, ValueError):
        return None
    best = []
    for b in budgets:
        cand = candidate_frame(fit, float(b))
        best.append(float(cand["bits"].iloc[int(np.nanargmin(_target(fit.predict(cand), metric)))]))
    runs = []
    for b, k in zip(budgets, best):
        if not runs or runs[-1][0] != k:
            runs.append([k, b, b])
        else:
            runs[-1][2] = b
    if len(runs) == 1:
        return f"`{law}` {bits_label(runs[0][0])}-bit at every budget"
    return f"`{law}` " + ", then ".join(f"{bits_label(k)}-bit from {lo:.3g}" for k, lo, _ in runs)


def answer_parts(dec: pd.DataFrame) -> list[str]:
    """One phrase per run of consecutive budgets with the same optimal k, e.g.
    ``4-bit from 1e+08 to 3e+09 total bits (P = 0.81-0.93)``, so a parallel-shift law whose
    answer does not depend on the budget reads as one statement, not five copies of it."""
    rows = list(dec.sort_values("total_bits").itertuples(index=False))
    parts: list[str] = []
    start = 0
    for i in range(1, len(rows) + 1):
        if i < len(rows) and rows[i].best_bits == rows[start].best_bits:
            continue
        run = rows[start:i]
        lo, hi = run[0].total_bits, run[-1].total_bits
        p_lo, p_hi = min(r.p_best for r in run), max(r.p_best for r in run)
        where = f"at {lo:.3g} total bits" if len(run) == 1 else f"from {lo:.3g} to {hi:.3g} total bits"
        prob = f"P = {p_lo:.2f}" if f"{p_lo:.2f}" == f"{p_hi:.2f}" else f"P = {p_lo:.2f}-{p_hi:.2f}"
        parts.append(f"{bits_label(run[0].best_bits)}-bit {where} ({prob})")
        start = i
    return parts
