"""The command line end to end on the toy family: rows, resume after kill -9, launchers, wandb.

Every run goes through ``python run_sweep.py`` in a subprocess, exactly as a user types it, with
a tiny toy ladder (the session's KSCALE_CACHE_DIR keeps it trained across tests) and a tmp
results_dir.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kscale.results import ROW_COLUMNS, load_results

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.slow

#: Small and quick: two toy sizes, a small eval budget. (Adjust here if conf/model/toy.yaml or
#: conf/eval/toy.yaml change their knobs.)
TINY = ["model=toy", "model.sizes=[L1-d8,L1-d16]", "model.provider_options.tokens_per_param=2",
        "eval=toy", "eval.perplexity=[{dataset:toy,max_tokens:1024}]", "report=false",
        "progress=false"]
GRID = ["bits=3,4,16", "dtype=int,float"]
CELLS_PER_MODEL = 1 + 2 * 2  # the 16-bit baseline once, then dtype x bits


def run_sweep(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYDRA_FULL_ERROR="0", WANDB_SILENT="true")
    return subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _metrics(df):
    cols = [c for c in df.columns if c.startswith(("ppl_", "nll_", "kl_"))]
    return df.set_index("key")[cols + ["bits_per_param", "status"]].sort_index()


@pytest.fixture(scope="module")
def basic(tmp_path_factory):
    """The reference table: the literal command with the basic (in-process) launcher."""
    out = tmp_path_factory.mktemp("basic")
    proc = _ok(run_sweep(*TINY, *GRID, f"results_dir={out}", "name=grid"))
    return out / "grid", proc


def test_literal_command_writes_one_row_per_cell(basic):
    study, proc = basic
    df = load_results(study)
    assert len(df) == 2 * CELLS_PER_MODEL
    assert df["key"].is_unique
    assert set(ROW_COLUMNS) <= set(df.columns)
    assert set(df["status"]) <= {"ok", "nan"} and (df["status"] == "ok").any()
    base = df[df["bits"] == 16]
    assert len(base) == 2 and set(base["method"]) == {"none"}  # once per model, not per dtype
    assert (base["bits_per_param"] == 16).all()
    kl = [c for c in df.columns if c.startswith("kl_")]
    assert kl and (base[kl].fillna(0).abs() < 1e-6).all().all()  # the baseline is the reference
    q = df[(df["bits"] == 3) & (df["status"] == "ok")]
    assert (q["bits_per_param"] > 3).all() and (q["bits_per_param"] < 4).all()
    assert (df.groupby("size")["n_params"].nunique() == 1).all()
    assert df["n_params"].nunique() == 2
    assert "table.parquet" in proc.stdout  # the final summary says where the table is
    # resume: the same command again runs nothing and keeps the table
    again = _ok(run_sweep(*TINY, *GRID, f"results_dir={study.parent}", "name=grid"))
    assert "every cell" in (again.stdout + again.stderr)
    assert len(load_results(study)) == len(df)


def test_kill_9_then_resume_equals_uninterrupted(basic, tmp_path):
    study_ref, _ = basic
    args = [*TINY, *GRID, f"results_dir={tmp_path}", "name=grid"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    rows_dir = tmp_path / "grid" / "rows"
    deadline = time.time() + 240
    n = 0
    while time.time() < deadline and proc.poll() is None:
        n = sum(f.read_text().count("\n") for f in rows_dir.glob("*.jsonl")) if rows_dir.exists() else 0
        if n >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = load_results(tmp_path / "grid")
    assert 0 < len(partial) < 2 * CELLS_PER_MODEL
    _ok(run_sweep(*args))
    resumed, ref = load_results(tmp_path / "grid"), load_results(study_ref)
    assert resumed["key"].is_unique and len(resumed) == len(ref)
    a, b = _metrics(resumed), _metrics(ref)
    assert list(a.index) == list(b.index)
    assert a.drop(columns="status").round(6).equals(b.drop(columns="status").round(6))


@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "wandb.mode=offline"],
    ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
], ids=["joblib2-wandb", "submitit_local"])
def test_launchers_give_the_same_table(basic, tmp_path, launcher):
    study_ref, _ = basic
    _ok(run_sweep(*TINY, *GRID, f"results_dir={tmp_path}", "name=grid", *launcher))
    df, ref = load_results(tmp_path / "grid"), load_results(study_ref)
    assert list(_metrics(df).index) == list(_metrics(ref).index)
    assert _metrics(df).round(6).equals(_metrics(ref).round(6))
    assert len(list((tmp_path / "grid" / "rows").glob("*.jsonl"))) == 2  # one file per job
    if "wandb.mode=offline" in launcher:
        every = sorted((tmp_path / "grid" / "wandb").glob("offline-run-*"))
        runs = [r for r in every if list((r / "files" / "media" / "table").glob("results_*.table.json"))]
        assert len(runs) == 2 and len(every) == 3  # one run per job + the study's summary run
        logged = set()
        for run in runs:
            tables = sorted((run / "files" / "media" / "table").glob("results_*.table.json"),
                            key=lambda p: p.stat().st_mtime)
            last = json.loads(tables[-1].read_text())
            logged |= {r[last["columns"].index("key")] for r in last["data"]}
        assert logged == set(df["key"])


@pytest.mark.parametrize("override, needle", [
    ("bits=0", "bits"), ("bits=3,17", "bits=17"), ("dtype=fp", "dtype"),
    ("blocksize=-1", "blocksize"), ("model.sizes=[L1-d8,nope]", "unknown size 'nope'"),
    ("model.local_paths={L1-d8:/does/not/exist}", "/does/not/exist"),
    ("wandb.mode=sometimes", "wandb.mode"),
])
def test_invalid_overrides_fail_before_anything_is_written(tmp_path, override, needle):
    proc = run_sweep(*TINY, f"results_dir={tmp_path}/res", "name=bad", override, timeout=120)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr  # a message, not a stack
    assert not (tmp_path / "res").exists()
