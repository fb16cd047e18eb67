"""Sweeps through a real SLURM cluster: the same table as the basic launcher, preemption and
hard kills without a lost or doubled cell, and two concurrent sweeps of one study.

Every sweep is ``python run_sweep.py ... hydra/launcher=submitit_slurm`` in a subprocess, exactly
as a user types it, on the two smallest toy rungs (by position in the family: the ladder's
labels may change) with a tiny eval; the reference table is the same command with Hydra's basic
launcher, which also trains the two rungs once for the session's cache.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kscale.results import iter_rows, load_results

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: the 16-bit baseline + 2 dtypes x 2 k, per model
GRID = ["bits=3,4,16", "dtype=int,float"]
CELLS_PER_MODEL = 1 + 2 * 2
N_MODELS = 2


@pytest.fixture(scope="module")
def toy_args() -> list[str]:
    """The sweep without results_dir/name: the two smallest toy rungs, a small eval (32k tokens:
    long enough per cell that a cancel or signal sent after the first row lands mid-job on a quiet
    machine; with 4k tokens both tasks could finish first and the cancel found nothing to kill)."""
    import kscale.toy  # noqa: F401 - registers the toy family
    from kscale.models import get_family

    smallest = list(get_family("toy").sizes)[:N_MODELS]  # the family lists its rungs smallest first
    return ["model=toy", f"model.sizes=[{','.join(smallest)}]",
            "model.provider_options.tokens_per_param=2", "eval=toy",
            "eval.perplexity=[{dataset:toy,max_tokens:32768}]", "report=false", "progress=false",
            *GRID]


def _env(env: dict | None) -> dict:
    return dict(env or os.environ, HYDRA_FULL_ERROR="0", WANDB_SILENT="true")


def run_sweep(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT,
                          env=_env(env), capture_output=True, text=True, timeout=timeout)


def start_sweep(*args: str, env: dict, log: Path) -> subprocess.Popen:
    """The same command in the background; its output goes to ``log``."""
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT,
                                env=_env(env), stdout=fh, stderr=subprocess.STDOUT, text=True)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def slurm_launcher(submitit_dir: Path) -> list[str]:
    """``hydra/launcher=submitit_slurm`` as the README tells a user to set it: a time limit long
    enough that SLURM's USR2 reads as preemption (submitit counts a signal after
    ``timeout_min - 10`` minutes as a timeout), requeues after a timeout allowed, its own
    submitit folder (job ids restart at 1 on a fresh cluster)."""
    return ["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=60",
            "hydra.launcher.signal_delay_s=120", "hydra.launcher.max_num_timeout=3",
            "hydra.launcher.cpus_per_task=1", f"hydra.launcher.submitit_folder={submitit_dir}/%j"]


def measured(df: pd.DataFrame) -> pd.DataFrame:
    """The measured columns per key (provenance, timings and paths aside)."""
    cols = [c for c in df.columns if c.startswith(("ppl_", "nll_", "kl_", "top1_"))]
    return df.set_index("key")[cols + ["bits_per_param", "total_bits", "n_params", "status"]].sort_index()


def assert_same_table(study: Path, reference: Path) -> None:
    """One row per cell, no key written twice, and every measurement equal to the reference."""
    keys = [row["key"] for row in iter_rows(study)]
    assert len(keys) == len(set(keys)), "a cell was written twice"
    df, ref = load_results(study), load_results(reference)
    assert len(df) == len(ref) == N_MODELS * CELLS_PER_MODEL
    assert_same_measurements(df, ref)


def assert_same_measurements(df: pd.DataFrame, ref: pd.DataFrame) -> None:
    """Cell for cell; float32 sums in another process (thread split) differ in the last bits only
    (measured: 1e-5 relative at most, on KL's 99th percentile), far below any real difference."""
    pd.testing.assert_frame_equal(measured(df), measured(ref), check_exact=False, rtol=1e-4, atol=1e-9)


def array_job_id(submitit_dir: Path) -> str:
    """The array's job id from submitit's folders (``<array>_<task>``)."""
    ids = {p.name.split("_")[0] for p in submitit_dir.iterdir() if re.fullmatch(r"\d+_\d+", p.name)}
    assert len(ids) == 1, f"expected one job array, found {sorted(ids)}"
    return ids.pop()


def rows_written(study: Path) -> int:
    return sum(1 for _ in iter_rows(study))


def wait_for_rows(proc: subprocess.Popen, study: Path, *, at_least: int, timeout: float = 180) -> int:
    """Poll until the study has ``at_least`` rows; returns how many it had."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before the rows it was waited for"
        n = rows_written(study)
        if n >= at_least:
            return n
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} rows after {timeout}s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, toy_args) -> Path:
    """The basic launcher's table; trains the two rungs once for the session's cache."""
    out = tmp_path_factory.mktemp("basic")
    ok(run_sweep(*toy_args, f"results_dir={out}", "name=study"))
    return out / "study"


def test_slurm_launcher_gives_the_basic_launchers_table(slurm_cluster, reference, toy_args, tmp_path):
    submitit = tmp_path / "submitit"
    proc = ok(run_sweep(*toy_args, f"results_dir={tmp_path}", "name=study",
                        *slurm_launcher(submitit), env=slurm_cluster.env))
    assert_same_table(tmp_path / "study", reference)
    job = array_job_id(submitit)
    states = dict(slurm_cluster.states(job))
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(N_MODELS)}  # one job per model
    assert len(list((tmp_path / "study" / "rows").glob("*.jsonl"))) == N_MODELS
    assert "table.parquet" in proc.stdout
    # the same command again submits nothing: every cell is finished
    again = ok(run_sweep(*toy_args, f"results_dir={tmp_path}", "name=study",
                         *slurm_launcher(tmp_path / "submitit2"), env=slurm_cluster.env))
    assert "every cell" in again.stdout + again.stderr
    assert not (tmp_path / "submitit2").exists()


def test_usr2_mid_cell_requeues_and_resumes_without_loss(slurm_cluster, reference, toy_args, tmp_path):
    """SLURM's warning before preemption or a time limit: submitit requeues the job, and the
    requeued job skips the cells already written; the cell in flight is computed again."""
    submitit, study = tmp_path / "submitit", tmp_path / "study"
    proc = start_sweep(*toy_args, f"results_dir={tmp_path}", "name=study",
                       *slurm_launcher(submitit), env=slurm_cluster.env, log=tmp_path / "sweep.log")
    try:
        n = wait_for_rows(proc, study, at_least=1)
        job = array_job_id(submitit)
        slurm_cluster.slurm("scancel", "--signal=USR2", job)  # every task of the array
        assert n < N_MODELS * CELLS_PER_MODEL
        assert proc.wait(timeout=300) == 0, (tmp_path / "sweep.log").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    records = slurm_cluster.states(job)
    assert ("REQUEUED" in {state for _, state in records}
            ), f"no task was requeued: {records}"
    assert sorted(state for _, state in records if state != "REQUEUED") == ["COMPLETED"] * N_MODELS
    logs = " ".join(p.read_text() for p in submitit.rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "this job is preempted" in logs
    assert re.search(r"cells to run, [1-9]\d* already finished", logs)  # resumed, not restarted
    assert_same_table(study, reference)


def test_hard_cancel_then_rerun_resumes(slurm_cluster, reference, toy_args, tmp_path):
    """``scancel`` without a signal kills the jobs (SIGKILL after KillWait); the waiting command
    fails, and running it again submits what is left and completes the table."""
    study = tmp_path / "study"
    args = [*toy_args, f"results_dir={tmp_path}", "name=study"]
    proc = start_sweep(*args, *slurm_launcher(tmp_path / "submitit"), env=slurm_cluster.env,
                       log=tmp_path / "sweep.log")
    try:
        wait_for_rows(proc, study, at_least=1)
        job = array_job_id(tmp_path / "submitit")
        slurm_cluster.slurm("scancel", job)
        assert proc.wait(timeout=180) != 0  # the launcher sees the jobs cancelled, not hanging
    finally:
        if proc.poll() is None:
            proc.kill()
    slurm_cluster.wait_idle()
    assert {state.split()[0] for _, state in slurm_cluster.states(job)} == {"CANCELLED"}
    partial = rows_written(study)
    assert 0 < partial < N_MODELS * CELLS_PER_MODEL
    ok(run_sweep(*args, *slurm_launcher(tmp_path / "submitit2"), env=slurm_cluster.env))
    assert_same_table(study, reference)


def test_two_concurrent_sweeps_leave_one_row_per_cell(slurm_cluster, reference, toy_args, tmp_path):
    """Two commands of the same study at once (four SLURM jobs, one results folder)."""
    procs = [start_sweep(*toy_args, f"results_dir={tmp_path}", "name=study",
                         *slurm_launcher(tmp_path / f"submitit{i}"), env=slurm_cluster.env,
                         log=tmp_path / f"sweep{i}.log") for i in range(2)]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], [(tmp_path / f"sweep{i}.log").read_text()[-3000:] for i in range(2)]
    df, ref = load_results(tmp_path / "study"), load_results(reference)
    assert df["key"].is_unique and len(df) == len(ref)
    assert_same_measurements(df, ref)
    table = pd.read_parquet(tmp_path / "study" / "table.parquet")  # both exported it: still whole
    assert sorted(table["key"]) == sorted(ref["key"])
