"""Regenerate a study's figures and ``summary.md`` from its results table.

``python -m kscale.report results/<name> [--metric nll_toy] [--law auto] [--n-bootstrap 1000] [--out DIR]``

Per family: the Figure-1 view with its Pareto frontier, block-size / data-type comparisons when
the study varied them, the best measured configuration per stretch of budgets, a comparison of the
registered laws by how well they predict the largest size from the smaller ones, the chosen law's
fit with bootstrap intervals and the bootstrap probability of each precision being optimal, and,
when the study has checkpoints of one size at several training-token counts, the degradation
ΔL = k-bit − 16-bit against training tokens (``qid`` / ``ptq`` laws). Anything that cannot be done
(too few points, too few sizes, a degenerate study) is said in the summary instead of crashing;
bad *input* (unknown law, metric or folder) is refused before anything is written.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kscale import plots
from kscale.fit import (
    DEFAULT_THRESHOLD,
    LAWS,
    FitError,
    bootstrap_law,
    extrapolate,
    fit_law,
    threshold_tokens,
    token_elasticity,
)
from kscale.fit.core import _group_label
from kscale.pareto import crossover, frontier_segments
from kscale.registry import UnknownNameError

log = logging.getLogger(__name__)

_METRIC_PREFERENCE = ("nll", "ppl", "bpb", "kl", "acc")
_METRIC_KINDS = ("nll", "ppl", "bpb", "kl", "acc", "top1")
#: ``--law auto``: pick the registered loss law with the smallest held-out-size error.
AUTO_LAW = "auto"
#: Used by ``auto`` when no held-out comparison is possible (too few sizes).
FALLBACK_LAW = "offset"
#: Below this many model sizes a fit's decision probabilities are not reported: two sizes fix a
#: curve through two points, and the bootstrap then measures noise, not the law's uncertainty.
MIN_SIZES_FOR_DECISION = 3
#: P(optimal) below this is reported as "not decided".
DECIDED_P = 0.9


class ReportError(ValueError):
    """Bad input to the report (unknown law or metric, missing study): nothing was written."""


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` produced."""

    summary_path: Path
    table_path: Path
    figure_paths: tuple[Path, ...] = field(default=())
    answer: str = ""
    problems: tuple[str, ...] = field(default=())
    laws: dict = field(default_factory=dict)  # family -> law used


def load_study(study_dir: str | Path) -> pd.DataFrame:
    """The study's results table (``kscale.results.load_results``).

    Raises:
        ReportError: the folder does not exist or holds no result rows.
    """
    from kscale.results import load_results

    study_dir = Path(study_dir)
    if not study_dir.exists():
        raise ReportError(f"study folder {str(study_dir)!r} does not exist")
    df = load_results(study_dir)
    if df.empty:
        raise ReportError(f"no result rows under {study_dir} (looked for rows/*.jsonl and *.jsonl)")
    return df


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Columns holding a metric (``nll_*``, ``ppl_*``, ``bpb_*``, ``kl_*``, ``acc_*``, ``top1_*``) with values."""
    return [c for c in df.columns if c.split("_", 1)[0] in _METRIC_KINDS and "_" in c
            and not c.endswith("_stderr") and pd.to_numeric(df[c], errors="coerce").notna().any()]


def choose_metric(df: pd.DataFrame) -> str:
    """Prefer ``nll_*`` of the first perplexity dataset, then ppl/bpb/kl, then accuracy."""
    for kind in _METRIC_PREFERENCE:
        cols = [c for c in df.columns if c.startswith(f"{kind}_") and pd.to_numeric(df[c], errors="coerce").notna().any()]
        if kind == "acc" and "acc_mean" in cols:
            return "acc_mean"
        if cols:
            return cols[0]
    raise ReportError(f"no metric column (nll_*, ppl_*, bpb_*, kl_*, acc_*) in the results table; columns: {sorted(df.columns)}")


def check_metric(df: pd.DataFrame, metric: str) -> None:
    """Raise :class:`ReportError` unless ``metric`` is a metric column with values."""
    available = metric_columns(df)
    if metric in available:
        return
    from kscale.registry import did_you_mean

    why = "has no finite values" if metric in df.columns else "is not in the results table"
    raise ReportError(f"metric {metric!r} {why}.{did_you_mean(metric, available)} "
                      f"Metrics in this study: {', '.join(available) or 'none'}")


def check_law(name: str) -> None:
    """Raise unless ``name`` is ``auto`` or a registered *loss* law (did-you-mean on typos)."""
    if name == AUTO_LAW:
        return
    try:
        spec = LAWS.get(name)
    except UnknownNameError as e:
        raise ReportError(f"{e} (or {AUTO_LAW!r}: the law with the smallest held-out-size error)") from None
    if spec.kind != "loss":
        raise ReportError(f"law {name!r} models {spec.kind} (delta_<metric>), not the metric itself; the report "
                          f"fits it in the training-tokens section. Loss laws: {', '.join(loss_laws())}")


def loss_laws() -> list[str]:
    return [n for n, law in LAWS.items() if law.kind == "loss"]


def _fmt(v: float) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.4g}"


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2%}"


def _n_sizes(df: pd.DataFrame) -> int:
    col = "n_params" if "n_params" in df.columns else "size"
    return int(df[col].nunique()) if col in df.columns else 0


# ------------------------------------------------------------------------------------------
# Law comparison by held-out-size error
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LawScore:
    law: str
    error: float  # mean held-out error (see held_out_error); NaN when not possible
    max_error: float
    n_rows: int
    reads_bits: bool
    note: str = ""
    ext: object = None


def compare_laws(df: pd.DataFrame, metric: str, names, *, n_holdout: int = 1) -> list[LawScore]:
    """Fit each law without the ``n_holdout`` largest sizes and score its prediction of them."""
    out = []
    for name in names:
        spec = LAWS.get(name)
        missing = [c for c in spec.needs if c not in df.columns]
        reads_bits = "bits" in spec.needs
        if missing:
            out.append(LawScore(name, math.nan, math.nan, 0, reads_bits, f"needs columns {missing}"))
            continue
        if n_holdout < 1:
            out.append(LawScore(name, math.nan, math.nan, 0, reads_bits, "held-out check switched off (--n-holdout 0)"))
            continue
        try:
            ext = extrapolate(df, name, y=metric, n_holdout=n_holdout)
        except (FitError, ValueError) as e:
            out.append(LawScore(name, math.nan, math.nan, 0, reads_bits, str(e)))
            continue
        if ext.heldout.empty:
            out.append(LawScore(name, math.nan, math.nan, 0, reads_bits, "no held-out rows it can predict", ext))
            continue
        err, worst = held_out_error(ext, metric)
        out.append(LawScore(name, err, worst, len(ext.heldout), reads_bits, "", ext))
    return out


def held_out_error(ext, metric: str) -> tuple[float, float]:
    """(mean, max) error of the held-out predictions: relative error for a metric, |log ratio| for a
    degradation (``delta_*``), whose values span orders of magnitude (relative errors of ΔL ≈ 1e-5
    cells would drown everything else)."""
    if metric.startswith("delta_"):
        obs = np.abs(ext.heldout[metric].to_numpy(dtype=float))
        pred = np.abs(ext.heldout["predicted"].to_numpy(dtype=float))
        e = np.abs(np.log(pred / obs))
        return ext.mean_abs_log_error, float(np.max(e))
    return ext.mean_abs_rel_error, ext.max_abs_rel_error


def _error_name(metric: str) -> str:
    return "mean |log(predicted/observed)|" if metric.startswith("delta_") else "mean |relative error|"


def _err(v: float, metric: str) -> str:
    return _fmt(v) if metric.startswith("delta_") else _pct(v)


def _choose(scores: list[LawScore], requested: str, *, need_bits: bool, fallback: str = FALLBACK_LAW,
            metric: str = "") -> tuple[str, str]:
    """(law to use, one sentence saying why)."""
    ok = [s for s in scores if np.isfinite(s.error) and (s.reads_bits or not need_bits)]
    ok.sort(key=lambda s: s.error)
    ranking = ", ".join(f"`{s.law}` {_err(s.error, metric)}" for s in ok)
    name = _error_name(metric)
    if requested != AUTO_LAW:
        if not ok:
            return requested, f"`{requested}` was used because it was asked for (no held-out comparison was possible)."
        best = ok[0]
        if best.law == requested:
            return requested, (f"`{requested}` was asked for and also predicts the held-out largest size best "
                               f"({name}: {ranking}).")
        return requested, (f"`{requested}` was used because it was asked for; by held-out-size error `{best.law}` "
                           f"predicts the largest size better ({name}: {ranking}).")
    if not ok:
        return fallback, (f"`{fallback}` was used by default: no law could be scored on a held-out size "
                          "(too few sizes or points).")
    why = (f"`{ok[0].law}` was used: it predicts the held-out largest size best when fitted on the smaller ones "
           f"({name}: {ranking})")
    if len(ok) > 1 and ok[1].error < 1.25 * ok[0].error:
        why += f"; a weak preference, since `{ok[1].law}` is within 25% of it"
    if need_bits and any(np.isfinite(s.error) and not s.reads_bits for s in scores):
        why += "; laws that ignore `bits` were not eligible, since they cannot say which precision is best"
    return ok[0].law, why + "."


def _law_table(scores: list[LawScore], used: str, metric: str = "") -> list[str]:
    head = "held-out mean abs. log ratio" if metric.startswith("delta_") else "held-out mean abs. rel. error"
    lines = [f"| law | formula | {head} | max | rows | note |", "|---|---|---|---|---|---|"]
    for s in sorted(scores, key=lambda s: (not np.isfinite(s.error), s.error)):
        mark = " (used)" if s.law == used else ""
        lines.append(f"| `{s.law}`{mark} | {LAWS.get(s.law).formula} | {_err(s.error, metric)} | {_err(s.max_error, metric)} | "
                     f"{s.n_rows} | {s.note.replace('|', '/')} |")
    return lines + [""]


# ------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------

def write_report(study_dir: str | Path, *, metric: str | None = None, law: str = AUTO_LAW, n_bootstrap: int = 1000,
                 seed: int = 0, known_E: float | None = None, budgets: list[float] | None = None,
                 n_holdout: int = 1, df: pd.DataFrame | None = None, out_dir: str | Path | None = None,
                 threshold: float = DEFAULT_THRESHOLD) -> Report:
    """Write ``summary.md``, ``best_per_budget.csv`` and ``figures/*.{png,pdf}`` for a study.

    Args:
        study_dir: folder of the study (its rows are read unless ``df`` is given).
        metric: column to analyse (default: :func:`choose_metric`); accuracy-like metrics
            (``acc_*``) are higher-is-better throughout.
        law: a loss law from ``kscale.fit.LAWS``, or ``"auto"`` (default): the one that best
            predicts the held-out largest size. The comparison table is written either way.
        n_bootstrap: resamples (0 skips the bootstrap).
        seed: bootstrap seed.
        known_E: the true irreducible loss, if known (default: the table's ``entropy_rate``), shown
            next to the fitted E; the fits bound E below by the table's ``entropy_rate``.
        budgets: total-bits budgets for decisions (default: 5 log-spaced over the observed range).
        n_holdout: largest sizes held out for law comparison and extrapolation (0 skips them).
        df: the results table (default: read from ``study_dir``).
        out_dir: where to write (default: ``study_dir``).
        threshold: degradation (nats) whose reaching the training-tokens section dates per size.

    Raises:
        ReportError: unknown law or metric, missing or empty study — before anything is written.
    """
    check_law(law)
    study_dir = Path(study_dir)
    df = load_study(study_dir) if df is None else df
    if df.empty:
        raise ReportError(f"the results table of {study_dir} is empty")
    metric = metric or choose_metric(df)
    check_metric(df, metric)
    out_dir = Path(out_dir) if out_dir is not None else study_dir
    if known_E is None and "entropy_rate" in df.columns and metric.startswith("nll_"):
        er = pd.to_numeric(df["entropy_rate"], errors="coerce").dropna()
        known_E = float(er.iloc[0]) if len(er) else None
    fig_dir = out_dir / "figures"
    figs: list[Path] = []
    problems: list[str] = []
    used: dict[str, str] = {}
    n_ok = int((df["status"].astype(str) == "ok").sum()) if "status" in df.columns else len(df)
    lines = [f"# Study summary: {study_dir.name}", "",
             f"Metric: `{metric}` ({plots.metric_label(metric)}); law: `{law}`; {len(df)} rows, {n_ok} ok.", ""]
    answers = []
    tables = []
    families = sorted(df["family"].astype(str).unique()) if "family" in df.columns else ["all"]
    for fam in families:
        sub = df[df["family"].astype(str) == fam] if "family" in df.columns else df
        lines += [f"## Family `{fam}`", ""]
        tag = fam.replace("/", "_")
        figs += _measured_figures(sub, metric, fam, tag, fig_dir, known_E, problems)
        full = sub
        if has_token_axis(sub):
            # Loss laws here are laws of size at one training recipe: mixing a size's early and final
            # checkpoints would read undertraining as a size effect. Tokens get their own section.
            sub = final_checkpoints(sub)
            lines += ["This study has checkpoints of each size at several training-token counts; the frontier and "
                      "law sections use each size's last checkpoint (largest `n_tokens`), the training-tokens "
                      "section all of them.", ""]
        tables += _frontier_section(sub, metric, fam, lines, problems)
        _crossover_section(sub, metric, lines)
        answer = _law_section(sub, metric, fam, tag, fig_dir, lines, problems, figs, used, law=law,
                              n_bootstrap=n_bootstrap, seed=seed, known_E=known_E, budgets=budgets, n_holdout=n_holdout)
        if answer:
            answers.append(answer)
        tokens_answer = _tokens_section(full, metric, fam, tag, fig_dir, lines, problems, figs, n_bootstrap=n_bootstrap,
                                        seed=seed, n_holdout=n_holdout, threshold=threshold)
        if tokens_answer:
            answers.append(tokens_answer)
    if not answers:
        answers.append("No law-based answer could be given: " + ("; ".join(problems) if problems else "no precision-dependent law fit."))
    answer = " ".join(answers)
    lines[4:4] = ["## Answer", "", answer, ""]
    if problems:
        lines += ["## What could not be done", ""] + [f"- {p}" for p in problems] + [""]
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / "best_per_budget.csv"
    (pd.concat(tables) if tables else pd.DataFrame()).to_csv(table_path, index=False)
    summary_path = out_dir / "summary.md"
    summary_path.write_text("\n".join(lines))
    log.info("wrote %s, %s and %d figures", summary_path, table_path, len(figs))
    return Report(summary_path=summary_path, table_path=table_path, figure_paths=tuple(figs), answer=answer,
                  problems=tuple(problems), laws=used)


def _measured_figures(sub, metric, fam, tag, fig_dir, known_E, problems) -> list[Path]:
    figs: list[Path] = []
    try:
        figs += plots.save_figure(plots.plot_bits_scaling(sub, metric, title=f"{fam}: {metric} vs total model bits",
                                                          known_E=known_E), fig_dir, f"{tag}-bits-scaling")
        quant = sub[sub["bits"].astype(float) < 16] if "bits" in sub else sub.iloc[:0]
        at4 = quant[quant["bits"].astype(float) == 4]
        if "blocksize" in sub.columns and at4["blocksize"].nunique() > 1:
            figs += plots.save_figure(plots.plot_ablation(sub, metric, "blocksize", bits=4), fig_dir, f"{tag}-blocksize")
        if "dtype" in sub.columns and quant["dtype"].nunique() > 1:
            figs += plots.save_figure(plots.plot_config_difference(sub, metric, "dtype"), fig_dir, f"{tag}-dtype")
    except (ValueError, KeyError) as e:
        problems.append(f"{fam}: figures: {e}")
    return figs


def _frontier_section(sub, metric, fam, lines, problems) -> list[pd.DataFrame]:
    try:
        seg = frontier_segments(sub, metric)
    except (ValueError, KeyError) as e:
        problems.append(f"{fam}: frontier: {e}")
        return []
    if seg.empty:
        return []
    seg.insert(0, "family", fam)
    lines += ["### Best measured configuration per total-bits budget", "",
              "One row per stretch of budgets with the same best measured configuration (and size). The runner-up "
              "is the best *other* configuration at the stretch's largest budget, where it comes closest.", "",
              "| budget from (bits) | to | best | value | runner-up | margin |", "|---|---|---|---|---|---|"]
    for _, r in seg.iterrows():
        lines.append(f"| {r['budget_from']:.3g} | {r['budget_to']:.3g} | {r['best_config']} ({r.get('best_size')}) | "
                     f"{_fmt(r['best_value'])} | {r['runner_up_config']} | {_fmt(r['margin'])} |")
    lines.append("")
    return [seg]


def _crossover_section(sub, metric, lines) -> None:
    if "bits" not in sub.columns:
        return
    ok = sub[sub["status"].astype(str) == "ok"] if "status" in sub.columns else sub
    ks = sorted(k for k in ok["bits"].dropna().astype(float).unique())
    cross = [crossover(sub, metric, a, b) for a, b in zip(ks[:-1], ks[1:])]
    if cross:
        lines += ["Crossovers (k-bit vs the next precision up, interpolated in log total bits): " + "; ".join(
            f"{_group_label(c.low_bits)} vs {_group_label(c.high_bits)}: {c.status}"
            + (f" at {c.total_bits:.3g} bits" if c.total_bits else "") for c in cross), ""]


def _fit_and_bootstrap(df, law, metric, n_bootstrap, seed, problems, label):
    """Fit ``law`` and, if asked, bootstrap it; a failed fit is noted in ``problems`` and
    re-raised, a failed bootstrap only noted (``boot`` is then None)."""
    try:
        fit = fit_law(df, law, y=metric)
    except (FitError, ValueError) as e:
        problems.append(f"{label}law fit not possible: {e}")
        raise
    boot = None
    if n_bootstrap > 0:
        try:
            boot = bootstrap_law(fit, n_resamples=n_bootstrap, seed=seed)
        except (ValueError, np.linalg.LinAlgError) as e:
            problems.append(f"{label}bootstrap failed: {e}")
    return fit, boot


def _law_section(sub, metric, fam, tag, fig_dir, lines, problems, figs, used, *, law, n_bootstrap, seed, known_E,
                 budgets, n_holdout) -> str | None:
    """Compare laws, fit the chosen one, bootstrap, decide; returns the answer sentence (or None)."""
    candidates = [n for n in loss_laws() if all(c in sub.columns for c in LAWS.get(n).needs)]
    if law != AUTO_LAW and law not in candidates:
        candidates.append(law)
    scores = compare_laws(sub, metric, candidates, n_holdout=n_holdout)
    chosen, why = _choose(scores, law, need_bits="bits" in sub.columns, metric=metric)
    used[fam] = chosen
    lines += ["### Which law", "", "Each registered law is fitted without the largest size and scored on predicting it "
              "(the honest test of a scaling law: it is a claim about models nobody measured). " + why, ""]
    lines += _law_table(scores, chosen, metric)
    try:
        fit, boot = _fit_and_bootstrap(sub, chosen, metric, n_bootstrap, seed, problems, f"{fam}: ")
    except (FitError, ValueError) as e:
        lines += [f"Law fit not possible: {e}", ""]
        return None
    ci = boot.intervals() if boot else {}
    lines += [f"### Law `{chosen}`: {fit.law_spec.formula}", "",
              f"{fit.n_points} points, objective (sum of Huber, δ={fit.delta:g}) = {fit.loss:.4g}, converged = {fit.converged} "
              f"({fit.status}), gradient norm = {fit.grad_norm:.2e}."
              + (f" Excluded: {fit.clean.message()}." if fit.clean and fit.clean.reasons else ""), "",
              "| parameter | value | 95% bootstrap interval |", "|---|---|---|"]
    for name, v in fit.params.items():
        lo, hi = ci.get(name, (math.nan, math.nan))
        lines.append(f"| {name} | {v:.6g} | [{_fmt(lo)}, {_fmt(hi)}] |")
    if known_E is not None and "E" in fit.params:
        lines.append(f"| E (known) | {known_E:.6g} | fitted − known = {fit.params['E'] - known_E:+.4g} |")
    lines.append("")
    if fit.floors:
        fl = next(iter(fit.floors.values()))
        at = fit.at_floor()
        lines += [f"The irreducible term{'s' if len(fit.law_spec.irreducible) > 1 else ''} "
                  f"({', '.join(fit.law_spec.irreducible)}) {'are' if len(fit.law_spec.irreducible) > 1 else 'is'} bounded "
                  f"below by the known entropy rate ({fl:.6g} in {metric}'s units): no model can beat it, so no curve may "
                  "extrapolate below it."
                  + (f" The fit sits on that bound ({', '.join(at)}): left free it would go lower, i.e. the law's curvature "
                     "over these sizes does not reach the true floor, and extrapolations far beyond the largest size should "
                     "be read with that in mind." if at else ""), ""]
    figs += plots.save_figure(plots.plot_fit(fit, boot), fig_dir, f"{tag}-fit-{chosen}")
    figs += plots.save_figure(plots.plot_residuals(fit), fig_dir, f"{tag}-residuals-{chosen}")
    score = next((s for s in scores if s.law == chosen), None)
    if score is not None and score.ext is not None and len(score.ext.heldout):
        ext = score.ext
        figs += plots.save_figure(plots.plot_extrapolation(ext), fig_dir, f"{tag}-extrapolation-{chosen}")
        lines += [f"Extrapolation: fitted without the largest {n_holdout} size(s) "
                  f"(n_params = {', '.join(f'{s:.3g}' for s in ext.holdout_sizes)}): mean |relative error| = "
                  f"{ext.mean_abs_rel_error:.2%}, max = {ext.max_abs_rel_error:.2%} over {len(ext.heldout)} held-out rows.", ""]
    elif n_holdout > 0:
        note = score.note if score is not None else "not attempted"
        problems.append(f"{fam}: extrapolation not possible: {note}")
        lines += [f"Extrapolation not possible: {note}", ""]
    others = [s.law for s in scores if s.law != chosen and s.reads_bits and np.isfinite(s.error)]
    return _decision_section(fit, boot, fam, chosen, metric, lines, problems, budgets, why, score, sub, others)


def _point_decisions(df, law, metric, budgets) -> str | None:
    """What another law's full-data fit (no bootstrap) says is optimal at ``budgets``, as a phrase."""
    from kscale.fit import candidate_frame
    from kscale.fit.core import _target

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
        return f"`{law}` {_group_label(runs[0][0])}-bit at every budget"
    return f"`{law}` " + ", then ".join(f"{_group_label(k)}-bit from {lo:.3g}" for k, lo, _ in runs)


def _decision_section(fit, boot, fam, chosen, metric, lines, problems, budgets, why, score, rows, others) -> str | None:
    if boot is None or "bits" not in fit.law_spec.needs:
        return None
    n_prec = fit.data["bits"].nunique() if "bits" in fit.data.columns else 0
    if n_prec < 2:
        problems.append(f"{fam}: only {n_prec} precision(s) left after cleaning: no optimal-bits decision")
        return None
    n_sizes = _n_sizes(fit.data)
    if n_sizes < MIN_SIZES_FOR_DECISION:
        msg = (f"{fam}: the fit rests on {n_sizes} model size(s); below {MIN_SIZES_FOR_DECISION} a law is a curve through "
               "as many points as it has sizes and its bootstrap probabilities would look confident without meaning it: "
               "no optimal-precision decision is reported")
        problems.append(msg)
        lines += [f"Optimal precision: not reported ({msg.split(': ', 1)[1]}).", ""]
        return None
    t = fit.data["total_bits"].astype(float) if "total_bits" in fit.data else None
    bl = budgets or (list(np.geomspace(t.min(), t.max(), 5)) if t is not None else [])
    try:
        dec = boot.decisions(bl)
    except ValueError as e:
        problems.append(f"{fam}: decisions: {e}")
        return None
    if dec.empty:
        return None
    pcols = [c for c in dec.columns if c.startswith("p_bits_")]
    lines += ["### Optimal precision per budget (law + bootstrap)", "",
              "| total bits | optimal bits | P(optimal) | 95% interval of optimal bits | " + " | ".join(
                  f"P({c[7:]}-bit)" for c in pcols) + " |", "|---" * (4 + len(pcols)) + "|"]
    for _, r in dec.iterrows():
        lines.append(f"| {r['total_bits']:.3g} | {_group_label(r['best_bits'])} | {r['p_best']:.2f} | "
                     f"[{_group_label(r['bits_lo'])}, {_group_label(r['bits_hi'])}] | "
                     + " | ".join(f"{r[c]:.2f}" for c in pcols) + " |")
    lines.append("")
    parts = _answer_parts(dec)
    decided = bool((dec["p_best"] >= DECIDED_P).all())
    lo, hi = _group_label(dec["bits_lo"].min()), _group_label(dec["bits_hi"].max())
    sentence = (f"{fam}: under the `{chosen}` law fitted to {metric}, the optimal precision is " + "; ".join(parts)
                + f" (bootstrap probability over {boot.n_resamples} resamples; 95% interval of the optimal bits "
                f"[{lo}, {hi}]). ")
    if decided:
        sentence += f"That is decided at the {DECIDED_P:.0%} level within the law."
    else:
        sentence += (f"That is not decided: the best precision has P < {DECIDED_P:.2f} at some budget, so other "
                     "precisions remain plausible.")
    if score is not None and np.isfinite(score.error):
        sentence += (f" The law itself is uncertain beyond the bootstrap: fitted without the largest size it "
                     f"mispredicts that size by {_pct(score.error)} on average.")
    sentence += " " + why
    alt = [p for p in (_point_decisions(rows, law, metric, bl) for law in others) if p]
    if alt:
        sentence += " The other laws' point fits say: " + "; ".join(alt) + "."
    if chosen == "offset":
        sentence += (" The `offset` law shifts one shared curve per precision, so its optimal k cannot depend on "
                     "the budget; fit `--law power` for an answer that may.")
    return sentence


def _answer_parts(dec: pd.DataFrame) -> list[str]:
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
        parts.append(f"{_group_label(run[0].best_bits)}-bit {where} ({prob})")
        start = i
    return parts


# ------------------------------------------------------------------------------------------
# Training tokens: degradation ΔL = k-bit − 16-bit of the same checkpoint (issue 11 §2)
# ------------------------------------------------------------------------------------------

def has_token_axis(df: pd.DataFrame) -> bool:
    """More than one distinct ``n_tokens`` for some size: the study measured training length."""
    if "n_tokens" not in df.columns:
        return False
    known = df[pd.to_numeric(df["n_tokens"], errors="coerce").notna()]
    size = "n_params" if "n_params" in known.columns else "size"
    return bool(len(known)) and int(known.groupby(size)["n_tokens"].nunique().max()) > 1


def final_checkpoints(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of each size's checkpoint with the most training tokens (rows with unknown tokens kept)."""
    size = "n_params" if "n_params" in df.columns else "size"
    d = pd.to_numeric(df["n_tokens"], errors="coerce")
    last = d.groupby(df[size]).transform("max")
    return df[d.isna() | (d == last)].reset_index(drop=True)


_CONFIG_COLUMNS = ("method", "dtype", "blocksize")
#: At most this many quantization configurations get their own degradation fit in the report.
MAX_DEGRADATION_CONFIGS = 4


def degradation_configs(df: pd.DataFrame, metric: str) -> list[dict]:
    """Quantization configurations (method, dtype, block size) of the quantized cells with a
    degradation, most measured first (ties in table order), e.g. ``[{"method": "rtn", "dtype": "int", ...}]``."""
    from kscale.results import add_delta

    out = add_delta(df, metric) if f"delta_{metric}" not in df.columns else df
    cols = [c for c in _CONFIG_COLUMNS if c in out.columns]
    quant = out[(out["bits"].astype(float) < 16) & out[f"delta_{metric}"].notna()]
    if quant.empty or not cols:
        return []
    counts = quant.groupby(cols, dropna=False, sort=False).size().sort_values(ascending=False, kind="stable")
    return [dict(zip(cols, k if isinstance(k, tuple) else (k,))) for k in counts.index]


def degradation_rows(df: pd.DataFrame, metric: str, config: dict | None = None) -> tuple[pd.DataFrame, str]:
    """``df`` with ``delta_<metric>`` (:func:`kscale.results.add_delta`), restricted to the 16-bit
    baselines and one quantization configuration (default: the most measured one), and a phrase
    naming that configuration. Degradation laws compare like with like: one data type's ΔL
    across checkpoints, not a mix whose composition changes along D."""
    from kscale.results import add_delta

    out = add_delta(df, metric)
    configs = degradation_configs(out, metric)
    if not configs:
        return out, "all quantized cells"
    cfg = configs[0] if config is None else config
    base = (out["bits"].astype(float) >= 16).to_numpy()
    keep = np.ones(len(out), dtype=bool)
    for c, v in cfg.items():
        keep &= (out[c] == v).to_numpy() | base
    phrase = " ".join(f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}" for c, v in cfg.items())
    if config is None and len(configs) > 1:
        phrase += f" (the most measured of {len(configs)} configurations)"
    return out[keep].reset_index(drop=True), phrase


def _tokens_section(sub, metric, fam, tag, fig_dir, lines, problems, figs, *, n_bootstrap, seed, n_holdout,
                    threshold) -> str | None:
    if not has_token_axis(sub) or "bits" not in sub.columns:
        return None
    configs = degradation_configs(sub, metric)
    lines += ["### Degradation vs training tokens", "",
              f"ΔL = `{metric}` of the k-bit cell − `{metric}` of the same checkpoint at 16 bit; checkpoints of one size "
              "differ in training tokens D. Each quantization configuration is fitted on its own.", ""]
    if not configs:
        problems.append(f"{fam}: no quantized cell has a 16-bit baseline of the same checkpoint: no degradation")
        return None
    if len(configs) > MAX_DEGRADATION_CONFIGS:
        problems.append(f"{fam}: degradation fitted for the {MAX_DEGRADATION_CONFIGS} most measured of "
                        f"{len(configs)} configurations only")
    sentences = []
    for cfg in configs[:MAX_DEGRADATION_CONFIGS]:
        data, phrase = degradation_rows(sub, metric, cfg)
        suffix = "" if len(configs) == 1 else "-" + "-".join(_safe(f"{v:g}" if isinstance(v, float) else v) for v in cfg.values())
        lines += [f"#### {phrase}", ""]
        s = _tokens_config(data, metric, f"{fam} ({phrase})", tag + suffix, fig_dir, lines, problems, figs,
                           n_bootstrap=n_bootstrap, seed=seed, n_holdout=n_holdout, threshold=threshold)
        if s:
            sentences.append(s)
    return " ".join(sentences) or None


def _safe(v) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(v))


def _tokens_config(data, metric, fam, tag, fig_dir, lines, problems, figs, *, n_bootstrap, seed, n_holdout,
                   threshold) -> str | None:
    y = f"delta_{metric}"
    names = [n for n, law in LAWS.items() if law.kind == "degradation" and all(c in data.columns for c in law.needs)]
    if not names:
        problems.append(f"{fam}: no degradation law can be fitted (columns missing)")
        return None
    scores = compare_laws(data, y, names, n_holdout=n_holdout)
    chosen, why = _choose(scores, AUTO_LAW, need_bits=False, fallback=names[0], metric=y)
    lines += [why, ""] + _law_table(scores, chosen, y)
    try:
        fit, boot = _fit_and_bootstrap(data, chosen, y, n_bootstrap, seed, problems, f"{fam}: degradation ")
    except (FitError, ValueError):
        return None
    ci = boot.intervals() if boot else {}
    lines += [f"Law `{chosen}`: {fit.law_spec.formula}; {fit.n_points} points"
              + (f" (excluded: {fit.clean.message()})" if fit.clean and fit.clean.reasons else "") + ".", "",
              "| parameter | value | 95% bootstrap interval |", "|---|---|---|"]
    for name, v in fit.params.items():
        lo, hi = ci.get(name, (math.nan, math.nan))
        lines.append(f"| {name} | {v:.6g} | [{_fmt(lo)}, {_fmt(hi)}] |")
    lines.append("")
    figs += plots.save_figure(plots.plot_degradation_vs_tokens(data, y, fit=fit, boot=boot,
                                                               title=f"{fam}: ΔL vs training tokens, law '{chosen}'"),
                              fig_dir, f"{tag}-degradation-tokens")
    el = token_elasticity(fit, boot)
    trend = {"grows": "grows", "shrinks": "shrinks", "undecided": "may grow or shrink (the interval includes 0)"}[el.verdict]
    interval = f"95% bootstrap interval [{el.lo:.3g}, {el.hi:.3g}]" if np.isfinite(el.lo) else "no bootstrap interval"
    sentence = (f"{fam}: at fixed size and precision, quantization-induced degradation {trend} with training tokens: "
                f"d log ΔL / d log D = {el.value:.3g} ({interval}, law `{chosen}`), i.e. doubling the tokens multiplies "
                f"ΔL by {2 ** el.value:.3g}.")
    lines += [sentence, ""]
    if metric.startswith("nll_"):
        lines += _threshold_part(fit, boot, data, fam, tag, fig_dir, figs, threshold)
    return sentence


def _threshold_part(fit, boot, data, fam, tag, fig_dir, figs, threshold) -> list[str]:
    sizes = np.sort(data["n_params"].astype(float).unique())
    all_sizes = list(sizes) + [sizes[-1] * 10, sizes[-1] * 100]
    bits = sorted(b for b in fit.data["bits"].astype(float).unique())
    tab = threshold_tokens(fit, boot, n_params=all_sizes, bits=bits, threshold=threshold)
    d = data["n_tokens"].astype(float)
    figs += plots.save_figure(plots.plot_threshold_tokens(tab, measured=(d.min(), d.max()),
                                                          measured_sizes=(sizes[0], sizes[-1]),
                                                          title=f"{fam}: tokens at which ΔL exceeds {threshold:g} nats"),
                              fig_dir, f"{tag}-threshold-tokens")
    out = [f"Training tokens at which k-bit ΔL reaches {threshold:g} nats (law `{fit.law}`; measured D from "
           f"{d.min():.3g} to {d.max():.3g}, sizes up to {sizes[-1]:.3g}; rows beyond them are extrapolations; inf = "
           "never reached by training longer):", "",
           "| n_params | bits | D at threshold | 95% interval | extrapolated |", "|---|---|---|---|---|"]
    for _, r in tab.iterrows():
        extra = not (sizes[0] <= r["n_params"] <= sizes[-1] and d.min() <= r["n_tokens"] <= d.max())
        out.append(f"| {r['n_params']:.3g} | {_group_label(r['bits'])} | {r['n_tokens']:.3g} | "
                   f"[{r['lo']:.3g}, {r['hi']:.3g}] | {'yes' if extra else 'no'} |")
    return out + [""]


# ------------------------------------------------------------------------------------------
# Comparison with published tables (kscale.references, issue 12 §3)
# ------------------------------------------------------------------------------------------

def _references():
    try:
        from kscale.references import compare
    except ImportError as e:
        raise ReportError(f"--compare needs kscale.references.compare, which could not be imported ({e})") from None
    return compare


def compare_with(df: pd.DataFrame, name: str) -> str:
    """Markdown comparison of the study with the published table ``name``.

    Raises:
        ReportError: the references module is missing or ``name`` is not a published table.
    """
    ref = _references()
    try:
        table = ref.compare_study(df, name)
    except UnknownNameError as e:
        raise ReportError(str(e)) from None
    return ref.format_comparison(table)


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kscale.report", description=__doc__.splitlines()[0])
    p.add_argument("study_dir", help="study folder written by run_sweep.py (results/<name>, with rows/*.jsonl)")
    p.add_argument("--metric", default=None,
                   help="metric column to analyse, e.g. nll_wikitext2 or acc_mean (default: the first nll_* column)")
    p.add_argument("--law", default=AUTO_LAW,
                   help=f"scaling law to fit: one of {', '.join(loss_laws())}, or '{AUTO_LAW}' for the one that best "
                        "predicts the held-out largest size (default: %(default)s)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples for intervals (0: none; default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--known-E", type=float, default=None,
                   help="true irreducible loss to print next to the fitted E (default: the rows' entropy_rate)")
    p.add_argument("--n-holdout", type=int, default=1,
                   help="largest sizes held out to compare laws and check extrapolation (0: skip; default: %(default)s)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="degradation in nats whose training-token count is reported per size, when the study "
                        "varies training tokens (default: %(default)s)")
    p.add_argument("--out", default=None, help="write summary.md, best_per_budget.csv and figures/ here instead of the study folder")
    p.add_argument("--compare", metavar="NAME", default=None,
                   help="also compare with the published table NAME (kscale.references) and write compare-NAME.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Everything that can be refused is checked before anything is written.
        check_law(args.law)
        df = load_study(args.study_dir)
        if args.metric:
            check_metric(df, args.metric)
        comparison = compare_with(df, args.compare) if args.compare else None
        rep = write_report(args.study_dir, df=df, metric=args.metric, law=args.law, n_bootstrap=args.n_bootstrap,
                           seed=args.seed, known_E=args.known_E, n_holdout=args.n_holdout, out_dir=args.out,
                           threshold=args.threshold)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rep.answer)
    print(f"summary: {rep.summary_path}")
    print(f"table:   {rep.table_path}")
    print(f"figures: {len(rep.figure_paths)} files under {rep.summary_path.parent / 'figures'}")
    if comparison is not None:
        path = rep.summary_path.parent / f"compare-{args.compare}.md"
        path.write_text(comparison)
        print(comparison)
        print(f"comparison: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
