#!/usr/bin/env python
"""Sweep overhead: one model x 6 cells, load once vs the naive one-process-per-cell way.

    python benchmarks/sweep_overhead.py [--repeats 5] [overrides ...]   (default: model=toy, its largest size)

Reports
  * ratio = job wall time (load + 16-bit reference + quantize + evaluate + row writes) divided by
    the sum of the cells' eval_s (target <= 1.15: bookkeeping adds at most 15 %), and
  * the naive wall time: ``python run_sweep.py ... bits=<k>`` once per cell, each process
    importing torch and reloading the model, for comparison.
Extra arguments are Hydra overrides applied to both (e.g. ``model.sizes=[m]`` or an eval budget).

The first model a process loads also imports its transformers modeling code (~3-5 s here for
GPT-2, most of it ``import``, not loading) and builds transformers' checkpoint-renaming table
(~0.6 s of regex compilation) and imports its tokenizer machinery: a once-per-process cost that a job with several models,
or a worker of a launcher, pays once. ``ratio`` is measured after that import (``import_s``,
reported separately); ``ratio_cold`` includes it. The job runs ``--repeats`` times (default 5);
``ratio`` is the median of the per-run ratios with their min-max spread, next to the load
average; the naive way runs once.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import DEFAULT_REPEATS, fmt, load, verdict

ROOT = Path(__file__).resolve().parents[1]
BITS = [3, 4, 5, 6, 8, 16]


def compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose(config_name="sweep", overrides=overrides, return_hydra_config=True)


def import_modeling_code(spec) -> None:
    """Import the transformers modeling module of ``spec``'s architecture (no weights loaded)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(spec.source, trust_remote_code=spec.trust_remote_code)
    MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    try:  # transformers >= 5 builds its checkpoint-renaming table (~600 regexes) once per process
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        get_checkpoint_conversion_mapping(config.model_type)
    except ImportError:
        pass
    # modules the first load imports lazily: the fast-tokenizer machinery and kscale's tracking
    import importlib

    for module in ("transformers.tokenization_utils_tokenizers", "transformers.convert_slow_tokenizer",
                   "kscale.tracking"):
        try:
            importlib.import_module(module)
        except ImportError:  # another transformers layout: the first load imports it instead
            pass


def main(argv: list[str], repeats: int = DEFAULT_REPEATS) -> dict:
    from kscale.config import build_plan
    from kscale.models import prepare_models
    from kscale.results import load_results
    from kscale.sweep import run_plan

    out = Path(tempfile.mkdtemp(prefix="kscale-bench-"))
    base = ["model=toy", "dtype=int", "blocksize=64", "report=false", "progress=false",
            f"results_dir={out}", "wandb.mode=disabled"] + argv
    probe = build_plan(compose(base + ["bits=16"]))
    if not any(a.startswith("model.sizes") for a in argv):  # default: the largest size
        base.append(f"model.sizes=[{probe.models[-1].size}]")
    plan = build_plan(compose(base + [f"bits=[{','.join(map(str, BITS))}]", "name=in_job"]))
    assert len(plan.models) == 1 and len(plan.cells) == len(BITS), (plan.models, plan.cells)
    prepare_models(list(plan.models), plan.provider_options)  # train the toy ladder outside the timing

    t0 = time.perf_counter()
    import_modeling_code(plan.models[0])
    import_s = time.perf_counter() - t0

    # the job run `repeats` times (fresh study names, so nothing is skipped): the ratio of each
    # run is paired (wall and eval seconds of the same seconds), the figure is their median
    per_run, jobs, evals = [], [], []
    for r in range(repeats):
        plan_r = build_plan(compose(base + [f"bits=[{','.join(map(str, BITS))}]", f"name=in_job_{r}"]))
        t0 = time.perf_counter()
        run_plan(plan_r)
        jobs.append(time.perf_counter() - t0)
        evals.append(float(load_results(plan_r.study_dir)["eval_s"].sum()))
        per_run.append(jobs[-1] / evals[-1])
    job_s, eval_s = statistics.median(jobs), statistics.median(evals)

    t0 = time.perf_counter()
    for k in BITS:
        subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *base, f"bits={k}", "name=naive",
                        "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"],
                       check=True, cwd=ROOT, capture_output=True)
    naive_s = time.perf_counter() - t0
    result = {
        "model": f"{plan.models[0].family}-{plan.models[0].size}", "cells": len(plan.cells),
        "job_s": round(job_s, 2), "sum_eval_s": round(eval_s, 2),
        "ratio": fmt(per_run), "ratio_median": round(statistics.median(per_run), 3), "target_ratio": 1.15,
        "target": verdict(per_run, 1.15, higher_is_better=False), "load": load(),
        "import_s": round(import_s, 2), "ratio_cold": round((job_s + import_s) / eval_s, 3),
        "naive_one_process_per_cell_s": round(naive_s, 2),
        "speedup_vs_naive": round(naive_s / (job_s + import_s), 2),  # job: imports once; naive: once per cell
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    n = DEFAULT_REPEATS
    if "--repeats" in args:
        i = args.index("--repeats")
        n = int(args[i + 1])
        del args[i : i + 2]
    main(args, n)
