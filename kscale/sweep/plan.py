"""Frozen descriptions of a sweep: what to load, which cells to run, how to evaluate and record.

``kscale.config.build_plan`` makes a :class:`SweepPlan` from a Hydra config; notebooks can build
one directly. Nothing here imports OmegaConf or torch.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kscale.sweep.grid import CellSpec
from kscale.tracking import WANDB_MODES, TrackingSpec

__all__ = ["WANDB_MODES", "EvalPlan", "SweepPlan", "TrackingSpec"]


@dataclass(frozen=True)
class EvalPlan:
    """What to evaluate: the eval config's name, its content (for keys) and the parsed specs."""

    name: str
    config: Mapping[str, Any]
    specs: tuple[Any, ...]
    source: str = "auto"
    # perplexity windows per forward pass; part of the eval config, hence of every cell's key
    batch_size: int = 1

    @property
    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep job needs, as plain values.

    Attributes:
        name: study name; rows go to ``results_dir/name/rows``; wandb group.
        results_dir: parent of study folders.
        models: ``kscale.models.ModelSpec`` list (one job per entry under the sweeper).
        cells: the quantization grid run against every model (baseline first).
        eval: evaluation plan.
        data_dir / cache_dir: shared data and caches.
        rerun: run cells even if their key is already finished.
        progress: tqdm bars.
        tracking: wandb settings.
        config: the resolved config as a plain dict (wandb run config, provenance).
        provider_options: options for families whose checkpoints kscale builds (toy).
    """

    name: str
    results_dir: Path
    models: tuple[Any, ...]
    cells: tuple[CellSpec, ...]
    eval: EvalPlan
    data_dir: Path
    cache_dir: Path
    rerun: bool = False
    progress: bool = True
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    config: Mapping[str, Any] = field(default_factory=dict)
    provider_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def study_dir(self) -> Path:
        return Path(self.results_dir) / self.name
