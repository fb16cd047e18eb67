"""The edges a new user hits end in one line naming the setting, before any work (issue 21 §6).

Switches reject anything but true/false; an unwritable results_dir, wandb online without a key
or network, and a SLURM launcher whose ``sbatch`` fails are caught before a model loads or
submitit writes a pickle; Ctrl-C says how to resume; a local checkpoint named for one size
runs that size only.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kscale.config import ConfigError, build_plan
from kscale.paths import default_data_dir
from kscale.sweep.preflight import PreflightError, check_sbatch, check_writable, preflight

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT2 = default_data_dir() / "models" / "tiny-gpt2"
TOY = ["model=toy", "model.sizes=[L1-d8]", "model.provider_options.tokens_per_param=2", "eval=toy",
       "eval.perplexity=[{dataset:toy,max_tokens:1024}]", "progress=false", "report=false",
       "bits=3,16", "dtype=int"]


def _plan(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=list(overrides), return_hydra_config=True)
    return build_plan(cfg)


def _run(*args: str, env: dict | None = None, timeout: float = 600, **kw):
    env = dict(os.environ, HYDRA_FULL_ERROR="0", WANDB_SILENT="true", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.mark.parametrize("setting, value", [
    ("rerun", "no"), ("plan", "no"), ("report", "yes"), ("progress", "1"), ("plan_probe", "maybe"),
    ("model.trust_remote_code", "off")])
def test_every_switch_accepts_only_true_or_false(setting, value):
    # `rerun=no` used to re-run every finished cell (a non-empty string is truthy)
    with pytest.raises(ConfigError, match=rf"invalid override {setting}='?{value}'?: .*allowed values: true, false"):
        _plan(f"{setting}={value}")


def test_switches_keep_their_boolean_values():
    plan = _plan("rerun=true", "progress=false")
    assert plan.rerun is True and plan.progress is False


def test_a_local_path_for_one_size_runs_that_size_only():
    # README: model.local_paths.small=... (no model.sizes): the other GPT-2 sizes are not fetched
    plan = _plan("model=gpt2", f"model.local_paths.small={TINY_GPT2}")
    assert [(m.size, m.local_path) for m in plan.models] == [("small", str(TINY_GPT2))]
    # a generic family: one override names the checkpoint, no Llama-2 hub default, no '+'
    plan = _plan("model=llama", f"model.local_paths={{smol:{TINY_GPT2}}}")
    assert [(m.size, m.checkpoint, m.local_path) for m in plan.models] == [("smol", "smol", str(TINY_GPT2))]
    plan = _plan("model=opt", f"model.local_paths={{125m:{TINY_GPT2}}}")  # README's digit-label form
    assert [m.size for m in plan.models] == ["125m"]
    assert len(_plan("model=opt", "model.sizes=all", "plan=true").models) == 8  # every size, asked for


def test_unwritable_results_dir_is_named(tmp_path):
    if os.geteuid() == 0:  # permission bits do not bind root; /sys refuses new folders to anyone
        target = Path("/sys/kscale-test-results")
    else:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o555)
    with pytest.raises(PreflightError, match=r"invalid override results_dir: cannot write .*set results_dir="):
        check_writable(target / "study")
    check_writable(tmp_path / "ok" / "study")
    assert (tmp_path / "ok" / "study" / "rows").is_dir() and not list((tmp_path / "ok" / "study" / "rows").iterdir())


@pytest.fixture
def failing_sbatch(tmp_path, monkeypatch):
    """An ``sbatch`` on PATH that fails as a login node without a controller does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: resolve_ctls_from_dns_srv: res_nsearch error' >&2\n"
                      "echo 'sbatch: fatal: Could not establish a configuration source' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    monkeypatch.setenv("PATH", path)
    return path


def test_failing_sbatch_is_one_line_naming_the_launcher(failing_sbatch):
    launcher = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                "partition": "gpu"}
    with pytest.raises(PreflightError, match=r"hydra/launcher=submitit_slurm: .*--partition=gpu.* failed: "
                                             r"sbatch: fatal: Could not establish a configuration source$"):
        check_sbatch(launcher)
    # other launchers never ask SLURM
    preflight([], launcher={"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})


@pytest.mark.slow
def test_sweep_edges_end_in_one_line_before_any_work(tmp_path, failing_sbatch):
    """The command line as a user types it: one line on stderr, exit 1, nothing trained or
    submitted, no submitit pickles."""
    cases = {
        "sbatch": ([f"results_dir={tmp_path / 'r1'}", "hydra/launcher=submitit_slurm"],
                   {"PATH": failing_sbatch}, "hydra/launcher=submitit_slurm: "),
        "wandb": ([f"results_dir={tmp_path / 'r2'}", "wandb.mode=online"],
                  {"WANDB_API_KEY": "", "NETRC": str(tmp_path / "none")}, "wandb.mode=offline"),
        "rerun": ([f"results_dir={tmp_path / 'r3'}", "rerun=no"], {}, "rerun='no'"),
    }
    for name, (args, env, needle) in cases.items():
        proc = _run(*TOY, *args, env=env)
        assert proc.returncode == 1, f"{name}: {proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, f"{name}: {proc.stderr[-3000:]}"
        errors = [line for line in proc.stderr.splitlines() if "invalid override" in line]
        assert len(errors) == 1 and needle in errors[0], f"{name}: {proc.stderr[-2000:]}"
    assert not list(tmp_path.rglob("*.pkl"))  # submitit never started
    assert not list(tmp_path.rglob("*.jsonl"))  # no cell ran


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_resuming_finishes_the_study(tmp_path):
    from kscale.results import load_results

    args = [*TOY, "bits=2,3,4,5,6,8,16", "dtype=int,float,nf,quantile", f"results_dir={tmp_path}", "name=stop"]
    rows = tmp_path / "stop" / "rows"

    def n_rows() -> int:  # each process appends to its own rows file
        return sum(len(f.read_text().splitlines()) for f in rows.glob("*.jsonl"))

    proc = subprocess.Popen([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT,
                            env=dict(os.environ, HYDRA_FULL_ERROR="0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while n_rows() < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # wait until the job is inside its cell loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == ("interrupted — rerun the same command to resume "
                                            "(finished cells are kept)")
    done = n_rows()
    assert 2 <= done < 1 + 6 * 4  # stopped inside the grid
    # the same command resumes: the finished cells are not redone, the study completes
    assert _run(*args).returncode == 0
    df = load_results(tmp_path / "stop")
    assert len(df) == n_rows() == 1 + 6 * 4 and df["key"].is_unique
