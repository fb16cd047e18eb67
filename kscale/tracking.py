"""Experiment tracking: one Weights & Biases run per sweep job, one summary run per study, or nothing.

Why a thin wrapper: wandb is optional at run time (``wandb.mode=disabled`` is the default and
must not even import it), and a job that crashes must still ``finish()`` its run, or the next
job in the same process (the basic launcher runs them in one) inherits a dangling run.

What a study's dashboard holds:
  * per job (``job_type="sweep-job"``), each finished cell twice: as metrics keyed by the cell's
    identity (``toy-s1/int4-b64-rtn/ppl_toy``) and as a row of a ``results`` table (all row
    columns), re-logged after every cell so a crash keeps the rows logged so far; and when the
    job ends, its model's curves: one native line chart per metric (``curves/<metric>``),
    metric against bits, one line per data type (per varying quantization setting), with the
    16-bit baseline as a flat line;
  * per study (``job_type="study-summary"``, :func:`log_study`, called by ``finish_study``): the
    report's figures (the Pareto frontier over total bits, the law fit with its bootstrap band,
    ...) as images under ``study/``, its ``summary.md`` (as HTML and as a run file), the merged
    results table and the report's one-paragraph answer in the run summary.

Offline runs write ``<dir>/wandb/offline-run-*/``: ``run-*.wandb`` (the record log) and
``files/media/{table,images}/...``.
"""
from __future__ import annotations

import html
import logging
import math
import netrc
import os
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kscale.net import unreachable_reason
from kscale.results import load_results

log = logging.getLogger(__name__)

WANDB_MODES: tuple[str, ...] = ("disabled", "offline", "online")
#: The in-job quantization settings that tell one curve of a job's chart from another (bits is
#: the x axis). Only those that vary among the job's rows name the lines.
SERIES_COLUMNS: tuple[str, ...] = ("method", "dtype", "blocksize", "centered", "exponent_bits",
                                   "scale_bits", "outlier_frac", "seed")
#: Row columns drawn as curves: the metrics a researcher reads against bits ...
CURVE_PREFIXES: tuple[str, ...] = ("nll_", "ppl_", "bpb_", "kl_", "top1_", "acc_")
#: ... but not their statistics (standard errors, KL quantiles, paired differences), which
#: would multiply the charts without adding a curve anyone reads first.
STAT_SUFFIXES: tuple[str, ...] = ("_se", "_stderr", "_max", "_median", "_p90", "_p99", "_tail",
                                  "_paired")
_DEFAULT_BASE_URL = "https://api.wandb.ai"


class TrackingError(ValueError):
    """Tracking cannot work as configured (no API key, server unreachable); raised before any work."""


@dataclass(frozen=True)
class TrackingSpec:
    """Weights & Biases settings. ``mode="disabled"`` (the default) never imports wandb."""

    mode: str = "disabled"
    project: str = "kscale"
    entity: str | None = None
    dir: str | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(
                f"wandb.mode must be one of {', '.join(WANDB_MODES)}; got {self.mode!r}"
            )


# ------------------------------------------------------------------ checks before any work


def _has_api_key(base_url: str) -> bool:
    """An API key in ``$WANDB_API_KEY`` or in the netrc file ``wandb login`` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    host = urllib.parse.urlparse(base_url).hostname or base_url
    try:
        return bool(netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def check_tracking(spec: TrackingSpec, *, timeout: float = 5.0) -> None:
    """Fail in seconds, before any work, when ``wandb.mode=online`` cannot log.

    Raises:
        TrackingError: no API key, or the wandb server is unreachable; the message names
            ``wandb.mode=offline`` (runs kept on disk, ``wandb sync`` later) as the way out.
    """
    if spec.mode != "online":
        return
    base_url = os.environ.get("WANDB_BASE_URL") or _DEFAULT_BASE_URL
    hint = "use wandb.mode=offline (runs kept on disk; upload later with `wandb sync`)"
    if not _has_api_key(base_url):
        raise TrackingError(f"invalid override wandb.mode=online: no W&B API key (set WANDB_API_KEY "
                            f"or run `wandb login`); or {hint}")
    why = unreachable_reason(base_url, timeout=timeout)
    if why:
        raise TrackingError(f"invalid override wandb.mode=online: {why}; {hint}")


# ------------------------------------------------------------------ what the charts show


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def curve_metrics(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metric columns of ``rows`` worth a chart (finite numbers in some ok row)."""
    names: dict[str, None] = {}
    for row in rows:
        for col, value in row.items():
            if (col.startswith(CURVE_PREFIXES) and not col.endswith(STAT_SUFFIXES)
                    and _number(value) is not None):
                names.setdefault(col)
    return list(names)


def job_curves(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, list[tuple[float, float]]]:
    """``{line label: [(bits, value), ...]}`` for one metric of one job's ok rows, bits ascending.

    A line is one combination of the :data:`SERIES_COLUMNS` that vary among the quantized rows
    plus the data type (``int``, ``nf``; ``gptq int`` when methods vary; ``int blocksize=64``); a setting that
    only follows the data type (float's default exponent bits) names no line. The 16-bit
    baseline is the line ``16-bit`` drawn flat over the quantized bits' range."""
    ok = [r for r in rows if r.get("status", "ok") == "ok" and _number(r.get(metric)) is not None]
    quantized = [r for r in ok if r.get("bits") != 16]

    def varies(col: str, within: tuple[str, ...]) -> bool:
        groups: dict[tuple[str, ...], set[str]] = {}
        for r in quantized:
            groups.setdefault(tuple(str(r.get(c)) for c in within), set()).add(str(r.get(col)))
        return any(len(values) > 1 for values in groups.values())

    varying = (["method"] if varies("method", ()) else []) + ["dtype"]  # dtype names every line
    varying += [c for c in SERIES_COLUMNS if c not in ("method", "dtype") and varies(c, ("method", "dtype"))]
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in quantized:
        label = " ".join(f"{c}={r.get(c)}" if c not in ("method", "dtype") else str(r.get(c))
                         for c in varying)
        lines.setdefault(label, []).append((float(r["bits"]), float(r[metric])))
    for label in lines:
        lines[label].sort()
    baselines = [float(r[metric]) for r in ok if r.get("bits") == 16]
    if baselines and quantized:
        bits = [float(r["bits"]) for r in quantized]
        lines["16-bit"] = [(min(bits), baselines[0]), (max(bits), baselines[0])]
    return lines


# ------------------------------------------------------------------ trackers


class Tracker:
    """No-op tracker (``wandb.mode=disabled``); also the interface."""

    def log_row(self, row: Mapping[str, Any], *, label: str) -> None:  # noqa: D102
        pass

    def finish(self, *, failed: bool = False) -> None:  # noqa: D102
        pass

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(failed=exc_type is not None)


def _init_run(spec: TrackingSpec, *, group: str, name: str, job_type: str,
              config: Mapping[str, Any]) -> Any:
    import wandb  # on use: wandb takes seconds to import, and only a run that tracks needs it

    if spec.dir:
        os.makedirs(spec.dir, exist_ok=True)
    return wandb.init(
        mode=spec.mode, project=spec.project, entity=spec.entity, dir=spec.dir,
        group=group, name=name, job_type=job_type, tags=list(spec.tags),
        config=dict(config), reinit="finish_previous",
    )


class WandbTracker(Tracker):
    """One wandb run: ``group`` = study name, ``name`` = the job (``toy-s1``)."""

    def __init__(self, spec: TrackingSpec, *, group: str, name: str,
                 config: Mapping[str, Any]) -> None:
        import wandb  # on use: wandb takes seconds to import, and only a run that tracks needs it

        self._wandb = wandb
        self.run = _init_run(spec, group=group, name=name, job_type="sweep-job", config=config)
        self.name = name
        self.columns: list[str] | None = None
        self.rows: list[list[Any]] = []
        self.raw_rows: list[Mapping[str, Any]] = []
        log.info("wandb run %s (mode=%s, group=%s) in %s", name, spec.mode, group, self.run.dir)

    def log_row(self, row: Mapping[str, Any], *, label: str) -> None:
        metrics = {
            f"{label}/{k}": v for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.columns is None:
            self.columns = list(row)
        for col in row:
            if col not in self.columns:  # a later cell with extra metrics widens the table
                self.columns.append(col)
                for old in self.rows:
                    old.append(None)
        self.rows.append([_plain(row.get(c)) for c in self.columns])
        self.raw_rows.append(dict(row))
        table = self._wandb.Table(columns=self.columns, data=self.rows)
        self.run.log({**metrics, "results": table})

    def log_curves(self) -> None:
        """The job's model: one line chart per metric, metric vs bits, one line per data type."""
        charts = {}
        for metric in curve_metrics(self.raw_rows):
            lines = job_curves(self.raw_rows, metric)
            if not lines:
                continue
            charts[f"curves/{metric}"] = self._wandb.plot.line_series(
                xs=[[b for b, _ in pts] for pts in lines.values()],
                ys=[[v for _, v in pts] for pts in lines.values()],
                keys=list(lines), title=f"{self.name}: {metric} vs bits", xname="bits")
        if charts:
            self.run.log(charts)

    def finish(self, *, failed: bool = False) -> None:
        if self.run is None:
            return
        try:
            self.log_curves()  # also after a failure: the cells that finished are worth a look
        except Exception as err:  # noqa: BLE001 - a chart must never lose the run's rows
            log.warning("wandb: could not log the curves of %s: %s", self.name, err)
        self.run.finish(exit_code=1 if failed else 0)
        self.run = None


def make_tracker(spec: TrackingSpec, *, group: str, name: str,
                 config: Mapping[str, Any]) -> Tracker:
    """A :class:`WandbTracker` unless ``spec.mode == "disabled"``."""
    if spec.mode == "disabled":
        return Tracker()
    return WandbTracker(spec, group=group, name=name, config=config)


def log_study(spec: TrackingSpec, study_dir: str | Path, *, report: Any = None) -> None:
    """One summary run for a finished study: the report's figures (Pareto frontier, law fit with
    its bootstrap band, ...), its ``summary.md``, the merged table and the answer.

    ``report`` is what ``kscale.report.write_report`` returned (``figure_paths``,
    ``summary_path``, ``answer``), or None when no report was written (the table alone).
    Nothing is imported or written with ``mode="disabled"``."""
    if spec.mode == "disabled":
        return
    import wandb  # on use: wandb takes seconds to import, and only a run that tracks needs it

    study_dir = Path(study_dir)
    df = load_results(study_dir)
    run = _init_run(spec, group=study_dir.name, name=f"{study_dir.name}-study",
                    job_type="study-summary", config={"study_dir": str(study_dir)})
    try:
        payload: dict[str, Any] = {}
        if not df.empty:
            payload["study/results"] = wandb.Table(
                columns=[str(c) for c in df.columns],
                data=[[_plain(v) for v in row] for row in df.itertuples(index=False)])
        for path in _pngs(getattr(report, "figure_paths", None) or ()):
            payload[f"study/{path.stem}"] = wandb.Image(str(path), caption=path.stem)
        summary_path = getattr(report, "summary_path", None)
        if summary_path and Path(summary_path).is_file():
            text = Path(summary_path).read_text()
            payload["study/summary"] = wandb.Html(f"<pre>{html.escape(text)}</pre>",
                                                  data_is_not_path=True)
            run.save(str(summary_path), base_path=str(Path(summary_path).parent), policy="now")
        answer = getattr(report, "answer", None)
        if answer:
            run.summary["answer"] = str(answer)
        run.log(payload)
    finally:
        run.finish()


def _pngs(paths: Iterable[Any]) -> list[Path]:
    return [Path(p) for p in paths if str(p).endswith(".png") and Path(p).is_file()]
