"""Which loss law, and its fit: the comparison on the held-out largest size, parameters with
bootstrap intervals, the known floor, fit/residual/extrapolation figures."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kscale import plots
from kscale.fit import LAWS
from kscale.report.context import FamilyContext, FitOutcome, SectionOutput, fit_and_bootstrap
from kscale.report.inputs import AUTO_LAW, is_degradation_metric, loss_laws
from kscale.report.lawscore import LawScore, choose_law, compare_laws, law_table
from kscale.report.text import fmt


@dataclass(frozen=True)
class LawChoice:
    """The loss law the report uses for a family, why, and every law's held-out score."""

    law: str
    why: str
    scores: tuple[LawScore, ...]

    @property
    def score(self) -> LawScore | None:
        return next((s for s in self.scores if s.law == self.law), None)

    @property
    def others(self) -> list[str]:
        return [s.law for s in self.scores if s.law != self.law and s.reads_bits and np.isfinite(s.error)]


def law_choice(ctx: FamilyContext) -> LawChoice:
    """Compare the loss laws on the held-out largest size(s) and choose one (cached per family)."""
    def make() -> LawChoice:
        sub, requested = ctx.weight_rows, ctx.options.law
        candidates = [n for n in loss_laws() if all(c in sub.columns for c in LAWS.get(n).needs)
                      and (not LAWS.get(n).varies_any or any(sub[c].nunique() > 1 for c in LAWS.get(n).varies_any))]
        if requested != AUTO_LAW and requested not in candidates:
            candidates.append(requested)
        scores = compare_laws(sub, ctx.metric, candidates, n_holdout=ctx.options.n_holdout)
        law, why = choose_law(scores, requested, need_bits="bits" in sub.columns, metric=ctx.metric)
        return LawChoice(law, why, tuple(scores))

    return ctx.cached("law_choice", make)


def law_fit(ctx: FamilyContext) -> FitOutcome:
    """The chosen law fitted to the family's rows, with its bootstrap (cached)."""
    return fit_and_bootstrap(ctx, ctx.weight_rows, law_choice(ctx).law, ctx.metric, "weight_rows")


def applies(ctx: FamilyContext) -> bool:
    """Loss laws model a loss with a floor; a paired difference (dnll, kl) goes to the degradation laws."""
    return not is_degradation_metric(ctx.metric)


def law_section(ctx: FamilyContext) -> SectionOutput:
    out = SectionOutput()
    if not applies(ctx):
        out.markdown += [f"`{ctx.metric}` is a paired difference to the same model's 16-bit row (zero at 16 bit): the "
                         "loss laws, which model a loss above an irreducible floor, do not apply; "
                         + ("the degradation laws are fitted in the training-tokens section below." if ctx.token_axis
                            else "the degradation laws (`qid`, `ptq`) need checkpoints at several training-token "
                            "counts, which this study does not have."), ""]
        return out
    if ctx.n_sizes < 2:
        sizes = ", ".join(sorted(ctx.law_rows["size"].astype(str).unique())) if "size" in ctx.law_rows else "one"
        out.markdown += [f"One model size ({sizes}): there is nothing to fit; the measurements above are the result.", ""]
        out.answer = f"{ctx.family}: one model size ({sizes}), so there is no law to fit; see the measured table."
        return out
    choice = law_choice(ctx)
    chosen, metric, md = choice.law, ctx.metric, out.markdown
    ctx.study.laws_used[ctx.family] = chosen
    md += ["### Which law", "", "Each registered law is fitted without the largest size and scored on predicting it "
           "(the honest test of a scaling law: it is a claim about models nobody measured). " + choice.why, ""]
    if ctx.n_runtime_rows:
        md += [f"The laws are fitted on the weights-only cells (act_bits = kv_bits = 16); the {ctx.n_runtime_rows} "
               "cells with quantized activations or KV cache share those weight bits but not their loss, and are "
               "left out of every fit here.", ""]
    md += law_table(list(choice.scores), chosen, metric)
    res = law_fit(ctx)
    if res.error:
        out.problems.append(f"{ctx.family}: law fit not possible: {res.error}")
        md += [f"Law fit not possible: {res.error}", ""]
        return out
    if res.boot_error:
        out.problems.append(f"{ctx.family}: bootstrap failed: {res.boot_error}")
    fit, boot = res.fit, res.boot
    ci = boot.intervals() if boot else {}
    md += [f"### Law `{chosen}`: {fit.law_spec.formula}", "",
           f"{fit.n_points} points, objective (sum of Huber, δ={fit.delta:g}) = {fit.loss:.4g}, converged = {fit.converged} "
           f"({fit.status}), gradient norm = {fit.grad_norm:.2e}."
           + (f" Excluded: {fit.clean.message()}." if fit.clean and fit.clean.reasons else ""), "",
           "| parameter | value | 95% bootstrap interval |", "|---|---|---|"]
    for name, v in fit.params.items():
        lo, hi = ci.get(name, (math.nan, math.nan))
        md.append(f"| {name} | {v:.6g} | [{fmt(lo)}, {fmt(hi)}] |")
    if ctx.known_E is not None and "E" in fit.params:
        md.append(f"| E (known) | {ctx.known_E:.6g} | fitted − known = {fit.params['E'] - ctx.known_E:+.4g} |")
    md.append("")
    md += _floor_note(fit, metric)
    ctx.save(out, plots.plot_fit(fit, boot), f"fit-{chosen}")
    ctx.save(out, plots.plot_residuals(fit), f"residuals-{chosen}")
    score = choice.score
    n_holdout = ctx.options.n_holdout
    if score is not None and score.ext is not None and len(score.ext.heldout):
        ext = score.ext
        ctx.save(out, plots.plot_extrapolation(ext), f"extrapolation-{chosen}")
        md += [f"Extrapolation: fitted without the largest {n_holdout} size(s) "
               f"(n_params = {', '.join(f'{s:.3g}' for s in ext.holdout_sizes)}): mean |relative error| = "
               f"{ext.mean_abs_rel_error:.2%}, max = {ext.max_abs_rel_error:.2%} over {len(ext.heldout)} held-out rows.", ""]
    elif n_holdout > 0:
        note = score.note if score is not None else "not attempted"
        out.problems.append(f"{ctx.family}: extrapolation not possible: {note}")
        md += [f"Extrapolation not possible: {note}", ""]
    return out


def _floor_note(fit, metric: str) -> list[str]:
    if not fit.floors:
        return []
    fl = next(iter(fit.floors.values()))
    at = fit.at_floor()
    many = len(fit.law_spec.irreducible) > 1
    return [f"The irreducible term{'s' if many else ''} ({', '.join(fit.law_spec.irreducible)}) "
            f"{'are' if many else 'is'} bounded below by the known entropy rate ({fl:.6g} in {metric}'s units): no model "
            "can beat it, so no curve may extrapolate below it."
            + (f" The fit sits on that bound ({', '.join(at)}): left free it would go lower, i.e. the law's curvature "
               "over these sizes does not reach the true floor, and extrapolations far beyond the largest size should "
               "be read with that in mind." if at else ""), ""]
