"""Assemble the report: run every section for every family, write ``summary.md``,
``best_per_budget.csv`` and the figures, and remove figures an earlier report wrote that this one
did not (a summary never sits beside figures it does not describe)."""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kscale import plots
from kscale.fit import DEFAULT_THRESHOLD, DegeneratePointsWarning
from kscale.fit.paired_noise import use_paired_estimates
from kscale.report.context import ReportOptions, SectionOutput, StudyContext
from kscale.report.inputs import AUTO_LAW, load_study
from kscale.report.sections import SECTION_ORDER, SECTIONS

log = logging.getLogger(__name__)

#: The list of figures the last report wrote, kept beside them so the next one can remove stale ones.
FIGURE_MANIFEST = ".report-figures.json"


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` produced."""

    summary_path: Path
    table_path: Path
    figure_paths: tuple[Path, ...] = field(default=())
    answer: str = ""
    problems: tuple[str, ...] = field(default=())
    laws: dict = field(default_factory=dict)  # family -> law used
    metrics: dict = field(default_factory=dict)  # family -> metric analysed


def write_report(study_dir: str | Path, *, metric: str | None = None, law: str = AUTO_LAW, n_bootstrap: int = 1000,
                 seed: int = 0, known_E: float | None = None, budgets: list[float] | None = None,
                 n_holdout: int = 1, df: pd.DataFrame | None = None, out_dir: str | Path | None = None,
                 threshold: float = DEFAULT_THRESHOLD) -> Report:
    """Write ``summary.md``, ``best_per_budget.csv`` and ``figures/*.{png,pdf}`` for a study.

    Args:
        study_dir: folder of the study (its rows are read unless ``df`` is given).
        metric: column to analyse (default: each family's own, :func:`choose_metric`); accuracy-like
            metrics (``acc_*``) are higher-is-better throughout.
        law: a loss law from ``kscale.fit.LAWS``, or ``"auto"`` (default): the one that best
            predicts the held-out largest size. The comparison table is written either way.
        n_bootstrap: resamples (0 skips the bootstrap).
        seed: bootstrap seed.
        known_E: the true irreducible loss, if known (default: the table's ``entropy_rate``), shown
            next to the fitted E; the fits bound E below by the table's ``entropy_rate``.
        budgets: total-bits budgets for decisions (default: 5 log-spaced over the observed range).
        n_holdout: largest sizes held out for law comparison and extrapolation (0 skips them).
        df: the results table (default: read from ``study_dir``), so a caller that has loaded it
            (``kscale.sweep.finish``) does not load it twice.
        out_dir: where to write (default: ``study_dir``).
        threshold: degradation (nats) whose reaching the training-tokens section dates per size.

    Raises:
        ReportError: unknown law or metric, missing or empty study — before anything is written.
    """
    options = ReportOptions(metric=metric, law=law, n_bootstrap=n_bootstrap, seed=seed, known_E=known_E,
                            budgets=tuple(budgets) if budgets else None, n_holdout=n_holdout, threshold=threshold)
    df = load_study(study_dir) if df is None else df
    # cells stopped early by eval.target_se: their full-set paired estimate, not the subset's mean
    df, stopped_notes = use_paired_estimates(df)
    study = StudyContext(study_dir, df, options, out_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegeneratePointsWarning)
        report = _write(study, stopped_notes)
    _say_once(caught)
    return report


def _say_once(caught) -> None:
    """Each exclusion of degenerate points once, as a log line (no Python source line); the
    summary states them too. Other warnings are passed on unchanged."""
    seen = set()
    for w in caught:
        if issubclass(w.category, DegeneratePointsWarning):
            msg = str(w.message)
            if msg not in seen:
                seen.add(msg)
                log.warning("degenerate points: %s", msg)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _write(study: StudyContext, notes: list[str]) -> Report:
    df, options = study.df, study.options
    n_ok = int((df["status"].astype(str) == "ok").sum()) if "status" in df.columns else len(df)
    metrics = study.metrics
    metric_text = (f"`{options.metric}`" if options.metric else
                   ", ".join(f"`{m}` for {f}" for f, m in metrics.items()) if len(set(metrics.values())) > 1 else
                   f"`{next(iter(metrics.values()))}`")
    first = next(iter(metrics.values()))
    head = [f"# Study summary: {study.study_dir.name}", "",
            f"Metric: {metric_text} ({plots.metric_label(options.metric or first)}); law: `{options.law}`; "
            f"{len(df)} rows, {n_ok} ok.", ""] + [f"- {n}." for n in notes] + ([""] if notes else [])
    body: list[str] = []
    answers: list[str] = []
    problems: list[str] = list(study.skipped)
    tables: list[pd.DataFrame] = []
    figures: list[Path] = []
    for fam in study.families:
        body += [f"## Family `{fam.family}`", ""]
        for name in SECTION_ORDER:
            out: SectionOutput = SECTIONS.get(name)(fam)
            body += out.markdown
            figures += out.figures
            problems += out.problems
            if out.answer:
                answers.append(out.answer)
            if out.table is not None:
                tables.append(out.table)
    if not answers:
        answers.append("No law-based answer could be given: "
                       + ("; ".join(problems) if problems else "no precision-dependent law fit."))
    answer = " ".join(answers)
    lines = head + ["## Answer", "", answer, ""] + body
    if problems:
        lines += ["## What could not be done", ""] + [f"- {p}" for p in problems] + [""]
    out_dir = study.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / "best_per_budget.csv"
    (pd.concat(tables) if tables else pd.DataFrame()).to_csv(table_path, index=False)
    summary_path = out_dir / "summary.md"
    summary_path.write_text("\n".join(lines))
    removed = remove_stale_figures(out_dir / "figures", figures)
    log.info("wrote %s, %s and %d figures (%d stale removed)", summary_path, table_path, len(figures), len(removed))
    return Report(summary_path=summary_path, table_path=table_path, figure_paths=tuple(figures), answer=answer,
                  problems=tuple(problems), laws=dict(study.laws_used), metrics=metrics)


#: Figure names an earlier report (before the manifest existed) may have left: ``<family>-<kind>``.
_REPORT_FIGURE_KINDS = ("bits-scaling", "blocksize", "dtype", "fit-", "residuals-", "extrapolation-",
                        "degradation-tokens", "threshold-tokens", "paired")


def remove_stale_figures(fig_dir: Path, written: list[Path]) -> list[Path]:
    """Delete figures in ``fig_dir`` that an earlier report wrote and this one did not.

    Which files are the report's: those in the manifest the previous report left; without one
    (reports written before it existed), PNG/PDF files named like a report figure. Anything else in
    the folder is left alone. Returns the removed paths.
    """
    manifest = fig_dir / FIGURE_MANIFEST
    keep = {p.name for p in written}
    if manifest.exists():
        try:
            previous = set(json.loads(manifest.read_text()))
        except (json.JSONDecodeError, TypeError):
            previous = set()
    elif fig_dir.exists():
        previous = {p.name for p in fig_dir.iterdir() if p.suffix in (".png", ".pdf")
                    and any(f"-{kind}" in p.stem for kind in _REPORT_FIGURE_KINDS)}
    else:
        previous = set()
    removed = []
    for name in sorted(previous - keep):
        path = fig_dir / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    if written:
        fig_dir.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(sorted(keep), indent=0))
    elif manifest.exists():
        manifest.unlink()
    return removed
