#!/usr/bin/env python
"""Quantize every size of a model family to k bits, evaluate, and collect one results table.

    python run_sweep.py                                  # the embedded default study (toy ladder)
    python run_sweep.py model=opt bits=3,4,8             # comma lists are grid axes, no -m needed
    python run_sweep.py experiment=kbit_dtypes hydra/launcher=submitit_slurm

Comma lists of quantization axes run inside one job per model (load once, quantize many);
models are spread over workers by the launcher (hydra/launcher=joblib|submitit_local|
submitit_slurm). Rows go to ``results_dir/<name>/rows/*.jsonl``; re-running resumes. See
conf/sweep.yaml for every key and hydra_plugins/kscale_sweeper for the grouping.

    python run_sweep.py experiment=dettmers2022 plan=true   # what it would cost; runs nothing

``plan=true`` validates everything and prints jobs, cells (to run / finished), tokens, FLOPs,
device-hours, memory and disk (kscale.estimate); ``plan_out=plan.json`` also writes them.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="sweep")
def main(cfg: DictConfig) -> object:
    """One Hydra job: every model in ``cfg.model.sizes`` (the sweeper gives each job one)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kscale.config import build_plan
    from kscale.estimate import plan_settings, report_plan
    from kscale.sweep import finish_study, run_plan
    from kscale.sweep.preflight import PreflightError, preflight

    plan = build_plan(cfg)
    settings = plan_settings(cfg)
    if settings["plan"]:  # hydra.mode=RUN (or another sweeper): estimate this job, run nothing
        print(report_plan([plan], settings)[1])
        return []
    alone = HydraConfig.get().mode == RunMode.RUN  # hydra.mode=RUN: no sweeper, check and finish here
    if alone:
        try:
            preflight([plan])
        except PreflightError as err:
            print(f"run_sweep.py: {err}", file=sys.stderr)
            sys.exit(2)
    summaries = run_plan(plan)
    if alone:
        print(finish_study(plan.study_dir, report=bool(cfg.get("report", True)),
                           tracking=plan.tracking).text())
    return summaries


#: What Ctrl-C prints instead of a traceback: rows are appended per finished cell, so rerunning
#: the command skips them and redoes only the cell that was in flight.
INTERRUPTED = "interrupted — rerun the same command to resume (finished cells are kept)"


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print(f"\n{INTERRUPTED}", file=sys.stderr)
        sys.exit(130)
