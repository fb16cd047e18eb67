"""Experiment tracking: one Weights & Biases run per sweep job, or nothing at all.

Why a thin wrapper: wandb is optional at run time (``wandb.mode=disabled`` is the default and
must not even import it), and a job that crashes must still ``finish()`` its run, or the next
job in the same process (the basic launcher runs them in one) inherits a dangling run.

Each finished cell is logged twice:
  * as metrics keyed by the cell's identity (``toy-s1/int4-b64-rtn/ppl_toy``), which the
    wandb UI plots and filters, and
  * as a row of a ``results`` table (all row columns), re-logged after every cell so a crash
    keeps the rows logged so far. Offline runs write it under
    ``<dir>/wandb/offline-run-*/files/media/table/results_*.table.json``.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from kscale.sweep.plan import TrackingSpec

log = logging.getLogger(__name__)


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


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class WandbTracker(Tracker):
    """One wandb run: ``group`` = study name, ``name`` = the job (``toy-s1``)."""

    def __init__(self, spec: TrackingSpec, *, group: str, name: str,
                 config: Mapping[str, Any]) -> None:
        import wandb

        self._wandb = wandb
        if spec.dir:
            os.makedirs(spec.dir, exist_ok=True)
        self.run = wandb.init(
            mode=spec.mode, project=spec.project, entity=spec.entity, dir=spec.dir,
            group=group, name=name, job_type="sweep-job", tags=list(spec.tags),
            config=dict(config), reinit="finish_previous",
        )
        self.columns: list[str] | None = None
        self.rows: list[list[Any]] = []
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
        table = self._wandb.Table(columns=self.columns, data=self.rows)
        self.run.log({**metrics, "results": table})

    def finish(self, *, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None


def make_tracker(spec: TrackingSpec, *, group: str, name: str,
                 config: Mapping[str, Any]) -> Tracker:
    """A :class:`WandbTracker` unless ``spec.mode == "disabled"``."""
    if spec.mode == "disabled":
        return Tracker()
    return WandbTracker(spec, group=group, name=name, config=config)
