"""Every ``python run_sweep.py`` command in README.md does what its comment says, offline.

Each command is run as written plus ``plan=true plan_out=...`` (the plan composes and validates
everything, prices every job and loads no weights, so hub checkpoints need no network), with the
README's placeholder folders (``/models/gpt2``, ``/ckpt/pythia``) replaced by local tiny
checkpoints. The check reads the plan's JSON: which jobs (family, size, revision), how many
cells, from which checkpoint. No command may modify a tracked file (``git status`` before and
after). ``make sweep ARGS=experiment=toy_tokens`` is run in a fresh clone: it finds the
committed rows, runs nothing and rewrites nothing.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kscale.models import get_family
from kscale.paths import default_data_dir

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT2 = default_data_dir() / "models" / "tiny-gpt2"

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """The ``python run_sweep.py ...`` lines of README.md's code blocks, comments stripped."""
    text = (ROOT / "README.md").read_text()
    blocks = [b.replace("\\\n", " ") for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]
    return [" ".join(line.split("#", 1)[0].split()) for block in blocks for line in block.splitlines()
            if line.startswith("python run_sweep.py")]


def _sizes(family: str) -> list[str]:
    return list(get_family(family).sizes)


def _jobs(plan: dict) -> list[tuple]:
    return [(j["family"], j["size"], j["revision"]) for j in plan["jobs"]]


def _check_every_opt_size(plan):
    assert _jobs(plan) == [("opt", s, None) for s in _sizes("opt")]
    assert {j["cells"] for j in plan["jobs"]} == {4 * 3}  # int/float/nf/quantile x 3/4/8 bits
    assert all(set(j["tokens"]) == {"wikitext2"} for j in plan["jobs"])


def _check_two_opt_sizes(plan):
    assert _jobs(plan) == [("opt", "125m", None), ("opt", "350m", None)]
    assert {j["cells"] for j in plan["jobs"]} == {2 * 2}  # nf/float x blocksize 64/1024 at 4 bits


def _check_named_study(plan):
    families = [j["family"] for j in plan["jobs"]]
    assert families == ["opt"] * len(_sizes("opt")) + ["pythia"] * len(_sizes("pythia"))
    # kbit_dtypes: int/float/dynamic/quantile x 3..8 bits, plus the 16-bit baseline once
    assert {j["cells"] for j in plan["jobs"]} == {4 * 6 + 1}


def _check_methods_and_paper_eval(plan):
    assert [j["size"] for j in plan["jobs"]] == _sizes("opt")
    assert {j["cells"] for j in plan["jobs"]} == {3 * 4 * 2}  # rtn/gptq/awq x 4 dtypes x 3/4 bits
    assert all(j["calib_tokens_per_cell"] > 0 for j in plan["jobs"])  # gptq/awq calibrate
    assert set(plan["jobs"][0]["tokens"]) == {"wikitext2", "lambada", "piqa", "hellaswag", "winogrande"}


def _check_gpt2_local_dir(plan):
    assert _jobs(plan) == [("gpt2", s, None) for s in _sizes("gpt2")]
    assert all(j["tokenizer"] == "checkpoint:small" or j["tokenizer"].startswith("checkpoint:")
               for j in plan["jobs"])  # read from the local folders, not the hub


def _check_one_local_size(plan):
    # the local path names the size: the other GPT-2 sizes are not fetched from the hub
    assert _jobs(plan) == [("gpt2", "small", None)]
    assert plan["jobs"][0]["tokenizer"].startswith("checkpoint:")
    assert plan["jobs"][0]["cells"] == 4  # four data types at 4 bits


def _check_launcher(name):
    def check(plan):
        assert _jobs(plan) == [("opt", s, None) for s in _sizes("opt")]
        # the plan says how to spread it over a cluster: one array task per job
        assert plan["launcher"]["command"].startswith("hydra/launcher=submitit_slurm")
        assert plan["launcher"]["array_parallelism"] == len(_sizes("opt"))
    check.__name__ = f"_check_{name}"
    return check


def _check_kbit_dtypes_cluster(plan):
    # the named study's own model list (opt, pythia, bloom), each size one array task
    sizes = [("opt", s) for s in _sizes("opt")] + [("pythia", s) for s in _sizes("pythia")]
    assert [(f, s) for f, s, _ in _jobs(plan)] == sizes + [("bloom", s) for s in _sizes("bloom")]
    assert {j["cells"] for j in plan["jobs"]} == {4 * 6 + 1}


def _check_toy_tokens(plan):
    import yaml

    model = yaml.safe_load((ROOT / "conf" / "experiment" / "toy_tokens.yaml").read_text())["model"]
    sizes, revisions = model["sizes"], model["revisions"]
    assert (len(sizes), len(revisions)) == (4, 6)  # the comment: 4 sizes x 6 checkpoints
    assert _jobs(plan) == [("toy", s, r) for s in sizes for r in revisions]
    assert {j["cells"] for j in plan["jobs"]} == {6}  # int x 2,3,4,5,8 bits + the baseline


def _check_pythia_revisions(plan):
    revs = ["step1000", "step8000", "step36000", "step143000"]
    assert _jobs(plan) == [("pythia", s, r) for s in ("70m", "160m") for r in revs]
    assert {j["cells"] for j in plan["jobs"]} == {4 * 2 + 1}


def _check_pythia_offline(plan):
    assert _jobs(plan) == [("pythia", s, r) for s in _sizes("pythia") for r in ("step8000", "step143000")]
    assert all(j["tokenizer"].startswith("checkpoint:") for j in plan["jobs"])


CHECKS = {
    "python run_sweep.py model=opt bits=3,4,8": _check_every_opt_size,
    "python run_sweep.py model=opt model.sizes=[125m,350m] dtype=nf,float bits=4 blocksize=64,1024":
        _check_two_opt_sizes,
    "python run_sweep.py model=opt,pythia experiment=kbit_dtypes": _check_named_study,
    "python run_sweep.py model=opt method=rtn,gptq,awq bits=3,4 eval=paper": _check_methods_and_paper_eval,
    "python run_sweep.py model=gpt2 model.local_dir=/models/gpt2": _check_gpt2_local_dir,
    "python run_sweep.py model=gpt2 model.local_paths.small=/models/gpt2-small bits=4": _check_one_local_size,
    "python run_sweep.py model=opt hydra/launcher=joblib hydra.launcher.n_jobs=4": _check_launcher("joblib"),
    "python run_sweep.py model=opt hydra/launcher=submitit_slurm hydra.launcher.partition=gpu":
        _check_launcher("slurm"),
    "python run_sweep.py experiment=kbit_dtypes hydra/launcher=submitit_slurm hydra.launcher.partition=gpu "
    "hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=1440 hydra.launcher.max_num_timeout=5":
        _check_kbit_dtypes_cluster,
    "python run_sweep.py -cd experiments/kbit_dtypes experiment=kbit_dtypes hydra/launcher=slurm":
        _check_kbit_dtypes_cluster,
    "python run_sweep.py experiment=toy_tokens": _check_toy_tokens,
    "python run_sweep.py model=pythia model.sizes=[70m,160m] model.revisions=[step1000,step8000,step36000,step143000] bits=3,4,16":
        _check_pythia_revisions,
    "python run_sweep.py model=pythia model.local_dir=/ckpt/pythia model.revisions=[step8000,step143000]":
        _check_pythia_offline,
}


@pytest.fixture(scope="module")
def local_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The README's placeholder folders, filled with the tiny GPT-2 checkpoint (linked)."""
    if not (TINY_GPT2 / "config.json").is_file():
        pytest.skip(f"no tiny checkpoint at {TINY_GPT2}")
    root = tmp_path_factory.mktemp("ckpt")
    for size in _sizes("gpt2"):
        (root / "gpt2").mkdir(exist_ok=True)
        (root / "gpt2" / size).symlink_to(TINY_GPT2)
    for size in _sizes("pythia"):
        for rev in ("step8000", "step143000"):
            (root / "pythia" / size).mkdir(parents=True, exist_ok=True)
            (root / "pythia" / size / rev).symlink_to(TINY_GPT2)
    return {"/models/gpt2-small": TINY_GPT2, "/models/gpt2": root / "gpt2", "/ckpt/pythia": root / "pythia"}


def _git_status(repo: Path, *paths: str) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
                          cwd=repo, capture_output=True, text=True, check=True).stdout


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    # a clone elsewhere has no ../shared/data beside it: name the data folder explicitly
    env = dict(os.environ, HYDRA_FULL_ERROR="0", WANDB_SILENT="true",
               KSCALE_DATA_DIR=str(default_data_dir()))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


#: Runs run_sweep.main once per command in one process (imports paid once, not per command):
#: argv lists in, one exit status per command out.
DRIVER = """
import json, runpy, sys
codes = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["run_sweep.py", *argv]
    try:
        runpy.run_path("run_sweep.py", run_name="__main__")  # as `python run_sweep.py ...` does
        codes.append(0)
    except SystemExit as stop:
        codes.append(stop.code or 0)
print("EXIT CODES", json.dumps(codes))
"""


@pytest.fixture(scope="module")
def planned(local_checkpoints, tmp_path_factory) -> dict[str, dict]:
    """Every README command + ``plan=true plan_out=...``, run in the working tree: its plan.
    Sweeps write only under results/, so that is where tracked files could change."""
    out = tmp_path_factory.mktemp("plans")
    argvs, files = [], {}
    for i, command in enumerate(readme_commands()):
        args = shlex.split(command)[2:]
        for placeholder, path in sorted(local_checkpoints.items(), key=lambda kv: -len(kv[0])):
            args = [a.replace(f"={placeholder}", f"={path}") for a in args]
        files[command] = out / f"plan{i}.json"
        argvs.append([*args, "plan=true", f"plan_out={files[command]}"])
    before = _git_status(ROOT, "results")
    proc = _run(["-c", DRIVER, json.dumps(argvs)], ROOT, timeout=1200)
    assert proc.returncode == 0 and "EXIT CODES" in proc.stdout, proc.stderr[-4000:]
    assert _git_status(ROOT, "results") == before, "a README command modified tracked results"
    codes = json.loads(proc.stdout.split("EXIT CODES", 1)[1])
    return {c: (code, json.loads(files[c].read_text()) if files[c].exists() else None, proc.stderr)
            for c, code in zip(readme_commands(), codes)}


def test_every_readme_command_has_a_check():
    missing = [c for c in readme_commands() if c not in CHECKS]
    assert not missing, f"README commands without a check in {__file__}: {missing}"


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c.removeprefix("python run_sweep.py "))
def test_readme_command_does_what_its_comment_says(command, planned):
    code, plan, stderr = planned[command]
    assert code == 0 and plan is not None, f"{command} failed (exit {code}):\n{stderr[-3000:]}"
    CHECKS[command](plan)


def test_make_sweep_toy_tokens_in_a_fresh_clone_runs_nothing_and_rewrites_nothing(tmp_path):
    """``make sweep ARGS=experiment=toy_tokens`` = ``python run_sweep.py experiment=toy_tokens``
    (the make target only adds the venv set-up): the committed rows are found, nothing runs,
    and the committed figures, tables and summary stay byte-identical."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    make = (clone / "Makefile").read_text()
    assert "$(PY) run_sweep.py $(ARGS)" in make  # what `make sweep ARGS=...` runs
    # first the plan (seconds): committed rows that no longer match the committed config would
    # make the real command retrain and rerun the whole study; say so instead of doing it
    plan = _run(["run_sweep.py", "experiment=toy_tokens", "plan=true", f"plan_out={tmp_path / 'plan.json'}"], clone)
    assert plan.returncode == 0, plan.stderr[-3000:]
    totals = json.loads((tmp_path / "plan.json").read_text())["totals"]
    assert totals["to_run"] == 0, (
        f"results/toy-tokens is stale: {totals['to_run']} of {totals['cells']} cells of the committed "
        "experiment=toy_tokens have no committed row; regenerate and commit the study")
    proc = _run(["run_sweep.py", "experiment=toy_tokens"], clone)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "every cell of this sweep is finished" in proc.stdout + proc.stderr
    assert "launching" not in proc.stdout + proc.stderr
    assert _git_status(clone) == ""
