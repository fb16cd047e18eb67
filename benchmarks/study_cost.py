#!/usr/bin/env python
"""Study cost: the same study with full evaluation and with ``eval.target_se`` (sequential).

    python benchmarks/study_cost.py [--studies default,toy_tokens] [--target-se default=0.004 ...]

For each study (the default toy study, ``experiment=toy_tokens``) it runs ``run_sweep.py`` twice
into a temporary results folder — every cell on the full held-out set, then with
``eval.target_se=<nats>`` (cells stop once their paired ``dnll`` is known to that SE; the 16-bit
reference pass stays full) — and the report on each (``--metric nll_toy`` for the full run,
``nll_toy_paired`` for the sequential one: the 16-bit full-set NLL plus the cell's paired
difference, which is what a stopped cell knows about its full-set NLL). It prints the report's
answers side by side — optimal precision per budget, the chosen law, the token elasticity with
its 95 % interval — and the evaluated tokens (the rows' ``eval_tokens``, reference passes
included). Target: the same answers at <= 1/5 of the evaluated tokens.

Runs whatever toy ladder is committed (trained into the cache on first use). Costs minutes on a
quiet 2-core machine: both studies are run twice.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {"default": [], "toy_tokens": ["experiment=toy_tokens"]}
#: nats; chosen so both studies' answers are unchanged (see the README's Performance table)
DEFAULT_TARGETS = {"default": 0.003, "toy_tokens": 0.01}


def load_text() -> str:
    return f"load {os.getloadavg()[0]:.1f}/{os.cpu_count()} cpus"


def run(cmd: list[str], threads: int | None = None) -> float:
    t0 = time.perf_counter()
    env = dict(os.environ, HYDRA_FULL_ERROR="1", WANDB_MODE="disabled")
    if threads:  # on a busy machine OpenMP threads spin-wait for each other: one is faster
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0


def answers(summary: str) -> dict[str, str]:
    """The report's answers, as sentences of its summary.md: optimal precision per budget, the
    law chosen, the token elasticity (sign and interval)."""
    out = {}
    m = re.search(r"the optimal precision is (.+?) \(bootstrap", summary)
    out["optimal bits"] = re.sub(r" \(P = [^)]*\)", "", m.group(1)) if m else "-"
    m = re.search(r"`(\w+)` was used", summary)
    out["law"] = m.group(1) if m else "-"
    m = re.search(r"d log ΔL / d log D = ([-\d.e+]+) \(95% bootstrap interval \[([-\d.e+]+), ([-\d.e+]+)\]", summary)
    out["elasticity"] = f"{m.group(1)} [{m.group(2)}, {m.group(3)}]" if m else "-"
    return out


def same(full: dict[str, str], seq: dict[str, str]) -> bool:
    """Equal optimal precision and law; elasticity of the same sign with overlapping intervals."""
    if full["optimal bits"] != seq["optimal bits"] or full["law"] != seq["law"]:
        return False
    if full["elasticity"] == seq["elasticity"] == "-":
        return True
    try:
        (a, alo, ahi), (b, blo, bhi) = ([float(x) for x in re.findall(r"[-\d.e+]+", s)] for s in
                                        (full["elasticity"], seq["elasticity"]))
    except ValueError:
        return False
    return (a > 0) == (b > 0) and alo <= bhi and blo <= ahi


def tokens(study: Path) -> int:
    from kscale.results import load_results

    return int(load_results(study)["eval_tokens"].sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", default="default,toy_tokens")
    ap.add_argument("--target-se", nargs="*", default=[], metavar="STUDY=NATS",
                    help=f"eval.target_se per study (default: {DEFAULT_TARGETS})")
    ap.add_argument("--n-bootstrap", type=int, default=200)
    ap.add_argument("--keep", default=None, help="results folder to keep (default: a temporary one)")
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="Hydra overrides for both arms, e.g. a smaller grid: dtype=int 'model.sizes=[a,b]'")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the sweeps (1 on a busy machine)")
    args = ap.parse_args()
    targets = dict(DEFAULT_TARGETS)
    targets.update({k: float(v) for k, v in (s.split("=") for s in args.target_se)})
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="study-cost-"))
    print(f"load: {os.getloadavg()[0]:.1f} (1-min average, {os.cpu_count()} CPUs); results in {base}")
    all_ok = True
    for study in args.studies.split(","):
        common = [sys.executable, "run_sweep.py", *STUDIES[study], *args.override, f"results_dir={base}",
                  "report=false", "progress=false"]
        arms = {"full": ([], "nll_toy"), "sequential": ([f"eval.target_se={targets[study]}"], "nll_toy_paired")}
        got = {}
        for arm, (extra, metric) in arms.items():
            # the target is in the name: a study folder holds rows of one setting (a re-run resumes)
            name = f"{study}-full" if arm == "full" else f"{study}-se{targets[study]:g}"
            wall = run([*common, *extra, f"name={name}"], args.threads)
            out = base / f"{name}-report"
            run([sys.executable, "-m", "kscale.report", str(base / name), "--metric", metric, "--out", str(out),
                 "--n-bootstrap", str(args.n_bootstrap)])
            got[arm] = (answers((out / "summary.md").read_text()), tokens(base / name), wall)
        (fa, ft, fw), (sa, st, sw) = got["full"], got["sequential"]
        ok = same(fa, sa) and st <= ft / 5
        all_ok &= ok
        print(f"\n== {study}: eval.target_se={targets[study]} (load {os.getloadavg()[0]:.1f})")
        print(f"{'':14} {'full':>44}   {'sequential':>44}")
        for key in fa:
            print(f"{key:14} {fa[key]:>44}   {sa[key]:>44}")
        print(f"{'eval tokens':14} {ft:>44,}   {st:>44,}")
        print(f"{'wall s':14} {fw:>44.0f}   {sw:>44.0f}")
        print(f"sequential / full tokens = {st / ft:.3f} (target <= 0.2); answers "
              f"{'unchanged' if same(fa, sa) else 'CHANGED'}: {'met' if ok else 'MISSED'}")
    print(f"\nstudy cost: {'met' if all_ok else 'MISSED'} ({load_text()})")


if __name__ == "__main__":
    main()
