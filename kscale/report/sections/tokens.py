"""Degradation vs training tokens: ΔL = k-bit − 16-bit of the same checkpoint, the ``qid``/``ptq``
laws, whether ΔL grows with training, and the tokens at which it crosses a threshold (issue 11 §2)."""
from __future__ import annotations

import math

import numpy as np

from kscale import plots
from kscale.fit import LAWS, threshold_tokens, token_elasticity
from kscale.report.checkpoints import degradation_column, degradation_configs, degradation_rows
from kscale.report.context import FamilyContext, SectionOutput, fit_and_bootstrap
from kscale.report.inputs import AUTO_LAW, is_degradation_metric
from kscale.report.lawscore import choose_law, compare_laws, law_table
from kscale.report.text import bits_label, fmt, safe_name

#: At most this many quantization configurations get their own degradation fit in the report.
MAX_DEGRADATION_CONFIGS = 4


def tokens_section(ctx: FamilyContext) -> SectionOutput:
    out = SectionOutput()
    sub, metric = ctx.rows, ctx.metric
    if not ctx.token_axis or "bits" not in sub.columns:
        return out
    configs = degradation_configs(sub, metric)
    what = (f"`{metric}` (a paired difference to the same checkpoint's 16-bit model)" if is_degradation_metric(metric)
            else f"ΔL = `{metric}` of the k-bit cell − `{metric}` of the same checkpoint at 16 bit")
    out.markdown += ["### Degradation vs training tokens", "",
                     f"{what}; checkpoints of one size differ in training tokens D. Each quantization configuration "
                     "is fitted on its own.", ""]
    if not configs:
        out.problems.append(f"{ctx.family}: no quantized cell has a 16-bit baseline of the same checkpoint: no degradation")
        return out
    if len(configs) > MAX_DEGRADATION_CONFIGS:
        out.problems.append(f"{ctx.family}: degradation fitted for the {MAX_DEGRADATION_CONFIGS} most measured of "
                            f"{len(configs)} configurations only")
    sentences = []
    for cfg in configs[:MAX_DEGRADATION_CONFIGS]:
        data, phrase = degradation_rows(sub, metric, cfg)
        suffix = "" if len(configs) == 1 else "-" + "-".join(safe_name(f"{v:g}" if isinstance(v, float) else v)
                                                               for v in cfg.values())
        out.markdown += [f"#### {phrase}", ""]
        s = _one_config(ctx, out, data, f"{ctx.family} ({phrase})", suffix)
        if s:
            sentences.append(s)
    out.answer = " ".join(sentences) or None
    return out


def _one_config(ctx: FamilyContext, out: SectionOutput, data, label: str, suffix: str) -> str | None:
    y = degradation_column(ctx.metric)
    md = out.markdown
    names = [n for n, law in LAWS.items() if law.kind == "degradation" and all(c in data.columns for c in law.needs)]
    if not names:
        out.problems.append(f"{label}: no degradation law can be fitted (columns missing)")
        return None
    scores = compare_laws(data, y, names, n_holdout=ctx.options.n_holdout)
    chosen, why = choose_law(scores, AUTO_LAW, need_bits=False, fallback=names[0], metric=y)
    md += [why, ""] + law_table(scores, chosen, y)
    res = fit_and_bootstrap(ctx, data, chosen, y, f"degradation{suffix}")
    if res.error:
        out.problems.append(f"{label}: degradation law fit not possible: {res.error}")
        return None
    if res.boot_error:
        out.problems.append(f"{label}: degradation bootstrap failed: {res.boot_error}")
    fit, boot = res.fit, res.boot
    ci = boot.intervals() if boot else {}
    md += [f"Law `{chosen}`: {fit.law_spec.formula}; {fit.n_points} points"
           + (f" (excluded: {fit.clean.message()})" if fit.clean and fit.clean.reasons else "") + ".", "",
           "| parameter | value | 95% bootstrap interval |", "|---|---|---|"]
    for name, v in fit.params.items():
        lo, hi = ci.get(name, (math.nan, math.nan))
        md.append(f"| {name} | {v:.6g} | [{fmt(lo)}, {fmt(hi)}] |")
    md.append("")
    ctx.save(out, plots.plot_degradation_vs_tokens(data, y, fit=fit, boot=boot,
                                                   title=f"{label}: ΔL vs training tokens, law '{chosen}'"),
             f"degradation-tokens{suffix}")
    el = token_elasticity(fit, boot)
    trend = {"grows": "grows", "shrinks": "shrinks", "undecided": "may grow or shrink (the interval includes 0)"}[el.verdict]
    interval = f"95% bootstrap interval [{el.lo:.3g}, {el.hi:.3g}]" if np.isfinite(el.lo) else "no bootstrap interval"
    sentence = (f"{label}: at fixed size and precision, quantization-induced degradation {trend} with training tokens: "
                f"d log ΔL / d log D = {el.value:.3g} ({interval}, law `{chosen}`), i.e. doubling the tokens multiplies "
                f"ΔL by {2 ** el.value:.3g}.")
    md += [sentence, ""]
    if y.startswith(("delta_nll_", "dnll_")):
        md += _threshold_part(ctx, out, fit, boot, data, label, suffix)
    return sentence


def _threshold_part(ctx, out, fit, boot, data, label, suffix) -> list[str]:
    threshold = ctx.options.threshold
    sizes = np.sort(data["n_params"].astype(float).unique())
    all_sizes = list(sizes) + [sizes[-1] * 10, sizes[-1] * 100]
    bits = sorted(b for b in fit.data["bits"].astype(float).unique())
    tab = threshold_tokens(fit, boot, n_params=all_sizes, bits=bits, threshold=threshold)
    d = data["n_tokens"].astype(float)
    ctx.save(out, plots.plot_threshold_tokens(tab, measured=(d.min(), d.max()), measured_sizes=(sizes[0], sizes[-1]),
                                              title=f"{label}: tokens at which ΔL exceeds {threshold:g} nats"),
             f"threshold-tokens{suffix}")
    lines = [f"Training tokens at which k-bit ΔL reaches {threshold:g} nats (law `{fit.law}`; measured D from "
             f"{d.min():.3g} to {d.max():.3g}, sizes up to {sizes[-1]:.3g}; rows beyond them are extrapolations; inf = "
             "never reached by training longer):", "",
             "| n_params | bits | D at threshold | 95% interval | extrapolated |", "|---|---|---|---|---|"]
    for _, r in tab.iterrows():
        extra = not (sizes[0] <= r["n_params"] <= sizes[-1] and d.min() <= r["n_tokens"] <= d.max())
        lines.append(f"| {r['n_params']:.3g} | {bits_label(r['bits'])} | {r['n_tokens']:.3g} | "
                     f"[{r['lo']:.3g}, {r['hi']:.3g}] | {'yes' if extra else 'no'} |")
    return lines + [""]
