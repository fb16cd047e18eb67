"""Regenerate a study's figures and ``summary.md`` from its results table.

``python -m kscale.report results/<name> [--metric nll_toy] [--law offset] [--n-bootstrap 1000]``

Per family: the Figure-1 view with its Pareto frontier, block-size / data-type comparisons when
the study varied them, the best configuration per total-bits budget (measured), a law fit with
bootstrap intervals and the bootstrap probability of each precision being optimal, and the
leave-largest-size-out extrapolation error. Anything that cannot be done (too few points, a
degenerate study) is said in the summary instead of crashing.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kscale import plots
from kscale.fit import FitError, bootstrap_law, extrapolate, fit_law
from kscale.fit.core import _group_label
from kscale.pareto import best_per_budget, crossover

log = logging.getLogger(__name__)

_METRIC_PREFERENCE = ("nll", "ppl", "bpb", "kl", "acc")


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` produced."""

    summary_path: Path
    table_path: Path
    figure_paths: tuple[Path, ...] = field(default=())
    answer: str = ""
    problems: tuple[str, ...] = field(default=())


def load_study(study_dir: str | Path) -> pd.DataFrame:
    """The study's results table: ``kscale.results.load_results`` when available, else its JSONL rows."""
    study_dir = Path(study_dir)
    try:
        from kscale.results import load_results
    except ImportError:
        load_results = None
    if load_results is not None:
        return load_results(study_dir)
    files = sorted((study_dir / "rows").glob("*.jsonl")) or sorted(study_dir.glob("*.jsonl"))
    if not files:
        raise ValueError(f"no result rows found under {study_dir} (looked for rows/*.jsonl and *.jsonl)")
    recs = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    df = pd.DataFrame(recs)
    if "key" in df.columns:
        df = df.drop_duplicates("key", keep="last").reset_index(drop=True)
    return df


def choose_metric(df: pd.DataFrame) -> str:
    """Prefer ``nll_*`` of the first perplexity dataset, then ppl/bpb/kl, then accuracy."""
    for kind in _METRIC_PREFERENCE:
        cols = [c for c in df.columns if c.startswith(f"{kind}_") and pd.to_numeric(df[c], errors="coerce").notna().any()]
        if kind == "acc" and "acc_mean" in cols:
            return "acc_mean"
        if cols:
            return cols[0]
    raise ValueError(f"no metric column (nll_*, ppl_*, bpb_*, kl_*, acc_*) in the results table; columns: {sorted(df.columns)}")


def _fmt(v: float) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.4g}"


def write_report(study_dir: str | Path, *, metric: str | None = None, law: str = "offset", n_bootstrap: int = 1000,
                 seed: int = 0, known_E: float | None = None, budgets: list[float] | None = None,
                 n_holdout: int = 1, df: pd.DataFrame | None = None) -> Report:
    """Write ``<study_dir>/summary.md``, ``best_per_budget.csv`` and ``figures/*.{png,pdf}``.

    Args:
        study_dir: folder of the study (its rows are read unless ``df`` is given).
        metric: column to analyse (default: :func:`choose_metric`).
        law: law name from ``kscale.fit.LAWS``.
        n_bootstrap: resamples (0 skips the bootstrap).
        seed: bootstrap seed.
        known_E: the true irreducible loss, if known (the toy language's entropy rate), printed next
            to the fitted E; default: the table's ``entropy_rate`` column when present.
        budgets: total-bits budgets for decisions (default: 5 log-spaced over the observed range).
        n_holdout: largest sizes held out for the extrapolation check (0 skips it).
    """
    study_dir = Path(study_dir)
    df = load_study(study_dir) if df is None else df
    if df.empty:
        raise ValueError(f"the results table of {study_dir} is empty")
    metric = metric or choose_metric(df)
    if metric not in df.columns:
        raise ValueError(f"metric {metric!r} is not in the results table; columns: {sorted(df.columns)}")
    if known_E is None and "entropy_rate" in df.columns:
        er = pd.to_numeric(df["entropy_rate"], errors="coerce").dropna()
        known_E = float(er.iloc[0]) if len(er) else None
    fig_dir = study_dir / "figures"
    figs: list[Path] = []
    problems: list[str] = []
    lines = [f"# Study summary: {study_dir.name}", "", f"Metric: `{metric}` ({plots.metric_label(metric)}); law: `{law}`; "
             f"{len(df)} rows, {int((df.get('status', pd.Series(['ok'] * len(df))) == 'ok').sum())} ok.", ""]
    answers = []
    tables = []
    families = sorted(df["family"].astype(str).unique()) if "family" in df.columns else ["all"]
    for fam in families:
        sub = df[df["family"].astype(str) == fam] if "family" in df.columns else df
        lines += [f"## Family `{fam}`", ""]
        tag = fam.replace("/", "_")
        # 1. measured frontier and Figure 1
        try:
            figs += plots.save_figure(plots.plot_bits_scaling(sub, metric, title=f"{fam}: {metric} vs total model bits",
                                                                      known_E=known_E if metric.startswith("nll_") else None),
                                      fig_dir, f"{tag}-bits-scaling")
            for col in ("blocksize", "dtype"):
                at4 = sub[sub["bits"].astype(float) == 4] if "bits" in sub else sub.iloc[:0]
                if col in sub.columns and at4[col].nunique() > 1:
                    figs += plots.save_figure(plots.plot_ablation(sub, metric, col, bits=4), fig_dir, f"{tag}-{col}")
        except (ValueError, KeyError) as e:
            problems.append(f"{fam}: figures: {e}")
        try:
            best = best_per_budget(sub, metric)
            if not best.empty:
                best.insert(0, "family", fam)
                tables.append(best)
                lines += ["### Best measured configuration per total-bits budget", "",
                          "| budget (bits) | best | value | runner-up | margin |", "|---|---|---|---|---|"]
                for _, r in best.iterrows():
                    lines.append(f"| {r['budget']:.3g} | {r['best_config']} ({r.get('best_size')}) | {_fmt(r['best_value'])} | "
                                 f"{r['runner_up_config']} | {_fmt(r['margin'])} |")
                lines.append("")
        except (ValueError, KeyError) as e:
            problems.append(f"{fam}: frontier: {e}")
        if "bits" in sub.columns:
            ok = sub[sub["status"].astype(str) == "ok"] if "status" in sub.columns else sub
            ks = sorted(k for k in ok["bits"].dropna().astype(float).unique())
            cross = [crossover(sub, metric, a, b) for a, b in zip(ks[:-1], ks[1:])]
            if cross:
                lines += ["Crossovers (k-bit vs the next precision up, interpolated in log total bits): " + "; ".join(
                    f"{_group_label(c.low_bits)} vs {_group_label(c.high_bits)}: {c.status}"
                    + (f" at {c.total_bits:.3g} bits" if c.total_bits else "") for c in cross), ""]
        # 2. law fit, bootstrap, extrapolation
        try:
            fit = fit_law(sub, law, y=metric)
        except (FitError, ValueError) as e:
            problems.append(f"{fam}: law fit not possible: {e}")
            lines += [f"Law fit not possible: {e}", ""]
            continue
        boot = None
        if n_bootstrap > 0:
            try:
                boot = bootstrap_law(fit, n_resamples=n_bootstrap, seed=seed)
            except (ValueError, np.linalg.LinAlgError) as e:
                problems.append(f"{fam}: bootstrap failed: {e}")
        ci = boot.intervals() if boot else {}
        lines += [f"### Law `{law}`: {fit.law_spec.formula}", "",
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
        figs += plots.save_figure(plots.plot_fit(fit, boot), fig_dir, f"{tag}-fit-{law}")
        figs += plots.save_figure(plots.plot_residuals(fit), fig_dir, f"{tag}-residuals-{law}")
        n_prec = fit.data["bits"].nunique() if "bits" in fit.data.columns else 0
        if boot is not None and "bits" in fit.law_spec.needs and n_prec < 2:
            problems.append(f"{fam}: only {n_prec} precision(s) left after cleaning: no optimal-bits decision")
        elif boot is not None and "bits" in fit.law_spec.needs:
            t = fit.data["total_bits"].astype(float) if "total_bits" in fit.data else None
            bl = budgets or (list(np.geomspace(t.min(), t.max(), 5)) if t is not None else [])
            try:
                dec = boot.decisions(bl)
            except ValueError as e:
                problems.append(f"{fam}: decisions: {e}")
                dec = pd.DataFrame()
            if not dec.empty:
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
                answers.append(f"{fam}: under the `{law}` law fitted to {metric}, the optimal precision is " + "; ".join(parts)
                               + f" (bootstrap probability over {boot.n_resamples} resamples)."
                               + (" The `offset` law shifts one shared curve per precision, so its optimal k"
                                  " cannot depend on the budget; fit `--law power` for an answer that may."
                                  if law == "offset" else ""))
        if n_holdout > 0:
            try:
                ext = extrapolate(sub, law, y=metric, n_holdout=n_holdout)
                figs += plots.save_figure(plots.plot_extrapolation(ext), fig_dir, f"{tag}-extrapolation-{law}")
                lines += [f"Extrapolation: fitted without the largest {n_holdout} size(s) "
                          f"(n_params = {', '.join(f'{s:.3g}' for s in ext.holdout_sizes)}): mean |relative error| = "
                          f"{ext.mean_abs_rel_error:.2%}, max = {ext.max_abs_rel_error:.2%} over {len(ext.heldout)} held-out rows.", ""]
            except (FitError, ValueError) as e:
                problems.append(f"{fam}: extrapolation not possible: {e}")
                lines += [f"Extrapolation not possible: {e}", ""]
    if not answers:
        answers.append("No law-based answer could be given: " + ("; ".join(problems) if problems else "no precision-dependent law fit."))
    answer = " ".join(answers)
    lines[4:4] = ["## Answer", "", answer, ""]
    if problems:
        lines += ["## What could not be done", ""] + [f"- {p}" for p in problems] + [""]
    study_dir.mkdir(parents=True, exist_ok=True)
    table_path = study_dir / "best_per_budget.csv"
    (pd.concat(tables) if tables else pd.DataFrame()).to_csv(table_path, index=False)
    summary_path = study_dir / "summary.md"
    summary_path.write_text("\n".join(lines))
    log.info("wrote %s, %s and %d figures", summary_path, table_path, len(figs))
    return Report(summary_path=summary_path, table_path=table_path, figure_paths=tuple(figs), answer=answer,
                  problems=tuple(problems))

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



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kscale.report", description=__doc__.splitlines()[0])
    p.add_argument("study_dir")
    p.add_argument("--metric", default=None)
    p.add_argument("--law", default="offset")
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--known-E", type=float, default=None)
    p.add_argument("--n-holdout", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rep = write_report(args.study_dir, metric=args.metric, law=args.law, n_bootstrap=args.n_bootstrap, seed=args.seed,
                       known_E=args.known_E, n_holdout=args.n_holdout)
    print(rep.answer)
    print(f"summary: {rep.summary_path}")
    print(f"table:   {rep.table_path}")
    print(f"figures: {len(rep.figure_paths)} files under {rep.summary_path.parent / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

