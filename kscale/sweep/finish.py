"""After the jobs of a study: merge the table, write the report, say where everything is."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kscale.results import export_table, load_results
from kscale.tracking import TrackingSpec, log_study

log = logging.getLogger(__name__)


@dataclass
class StudySummary:
    """What a finished study has on disk (``text()`` is what ``run_sweep.py`` prints last)."""

    study_dir: Path
    n_rows: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    report: Any = None  # kscale.report.Report

    def text(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.statuses.items())) or "none"
        lines = [f"study {self.study_dir.name}: {self.n_rows} cells ({counts})",
                 f"  rows:    {self.study_dir / 'rows'}"]
        for kind, path in self.tables.items():
            lines.append(f"  table:   {path}" if kind == "parquet" else f"           {path}")
        if self.report is not None:
            summary_path = getattr(self.report, "summary_path", None)
            if summary_path:
                lines.append(f"  summary: {summary_path}")
            for path in getattr(self.report, "figure_paths", None) or ():
                lines.append(f"  figure:  {path}")
            answer = getattr(self.report, "answer", None)
            if answer:
                lines += ["", str(answer)]
        return "\n".join(lines)


def finish_study(study_dir: str | Path, *, report: bool = True, write: bool = True,
                 tracking: TrackingSpec | None = None) -> StudySummary:
    """Export ``table.parquet``/``table.csv`` and (``report=True``) call ``kscale.report``.

    ``write=False`` (a command that ran nothing, its table already exported) only reads and
    counts: the files a study committed stay untouched. ``tracking``: a study summary run.

    Raises:
        Exception: from ``kscale.report.write_report`` (a real error; the table is already safe).
    """
    study_dir = Path(study_dir)
    summary = StudySummary(study_dir=study_dir)
    df = load_results(study_dir)
    summary.n_rows = len(df)
    if not df.empty:
        summary.statuses = {str(k): int(v) for k, v in df["status"].value_counts().items()}
        summary.tables = export_table(study_dir) if write else {}
    if not write:
        return summary
    if report and not df.empty and (df["status"] == "ok").any():
        from kscale.report import write_report

        summary.report = write_report(study_dir, df=df)  # the rows are loaded once
    if tracking is not None:
        log_study(tracking, study_dir, report=summary.report)
    return summary
