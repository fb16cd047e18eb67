"""Configs and registries agree by construction: every experiment composes with every family it
names, every registered name has its YAML and every YAML its registry entry, and the sweep's
top-level keys are one definition (lightning-hydra-template's config tests, STYLE §1.2)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kscale.config import SWEEP_KEYS, ConfigError, build_plan

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("sweep", overrides=list(overrides), return_hydra_config=True)


def _families_named(experiment: str) -> list[str]:
    """The families an experiment file runs: its ``override /model`` and its sweeper params."""
    data = yaml.safe_load((CONF / "experiment" / f"{experiment}.yaml").read_text()) or {}
    names: list[str] = []
    for entry in data.get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                if key.replace("override ", "").strip() == "/model":
                    names.append(value)
    params = (((data.get("hydra") or {}).get("sweeper") or {}).get("params") or {})
    if "model" in params:
        names += [m.strip() for m in str(params["model"]).split(",")]
    return list(dict.fromkeys(names)) or ["toy"]


def _local_checkpoints(tmp_path: Path, family: str) -> Path:
    """A folder with an (empty) checkpoint per size, so resolving the family needs no hub."""
    from kscale.models import get_family

    for size in get_family(family).sizes:
        (tmp_path / family / size).mkdir(parents=True, exist_ok=True)
        (tmp_path / family / size / "config.json").write_text("{}")
    return tmp_path / family


CASES = [(e, f) for e in EXPERIMENTS for f in _families_named(e)]


@pytest.mark.parametrize("experiment, family", CASES, ids=[f"{e}-{f}" for e, f in CASES])
def test_every_experiment_composes_and_validates_with_every_family_it_names(experiment, family, tmp_path):
    overrides = [f"experiment={experiment}", f"model={family}"]
    if family != "toy":
        overrides.append(f"model.local_dir={_local_checkpoints(tmp_path, family)}")
    cfg = _compose(*overrides)
    plan = build_plan(cfg)
    assert plan.cells and plan.models and plan.eval.specs


def test_the_sweep_keys_are_the_primary_config_keys():
    data = yaml.safe_load((CONF / "sweep.yaml").read_text())
    declared = set(data) - {"defaults", "hydra"}
    groups = {next(iter(d)).split("@")[-1].split(".")[0] if isinstance(d, dict) else d
              for d in data["defaults"]}
    assert declared | ({"model", "eval", "method_options"} & (groups | {"eval"})) == set(SWEEP_KEYS)


def test_every_method_has_its_options_yaml_and_every_yaml_a_method():
    from kscale.quant import METHODS

    yamls = {p.stem for p in (CONF / "method_options").glob("*.yaml")}
    assert yamls == set(METHODS.names())
    defaults = (CONF / "sweep.yaml").read_text()
    for name in METHODS.names():  # each is composed into method_options.<name>
        assert re.search(rf"^\s*- method_options@method_options\.{name}: {name}$", defaults, re.M), name
        options = OmegaConf.to_container(OmegaConf.load(CONF / "method_options" / f"{name}.yaml"))
        METHODS.get(name).configure(options or {})  # the YAML's keys are the method's options


def test_every_family_has_its_yaml_naming_its_default_eval_and_back():
    from kscale.models import FAMILIES

    yamls = {p.stem for p in (CONF / "model").glob("*.yaml")}
    assert yamls == set(FAMILIES.names())
    evals = {p.stem for p in (CONF / "eval").glob("*.yaml")}
    for name in yamls:
        cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
        assert cfg.name == name
        (entry,) = [d for d in cfg.defaults if "/eval@_global_.eval" in d]
        default_eval = entry["/eval@_global_.eval"]
        assert default_eval in evals
        assert default_eval == FAMILIES.get(name).default_eval == ("toy" if name == "toy" else "wikitext2")


def test_the_readme_headline_command_evaluates_wikitext2_not_the_toy_language():
    cfg = _compose("model=opt", "bits=[3,4,8]")
    assert [p["dataset"] for p in cfg.eval.perplexity] == ["wikitext2"]
    assert _compose().eval.perplexity[0]["dataset"] == "toy"  # the toy family keeps its own
    assert _compose("model=opt", "eval=paper").eval.zeroshot  # one override away


def test_sweeper_in_job_axes_are_the_grids_axes():
    import importlib
    import sys

    from kscale.sweep.grid import MODEL_AXES, QUANT_AXES

    sys.path.insert(0, str(ROOT))
    mod = importlib.import_module("hydra_plugins.kscale_sweeper.kscale_sweeper")
    assert tuple(mod.IN_JOB_AXES) == QUANT_AXES + MODEL_AXES


def test_a_typo_key_is_rejected_not_ignored():
    with pytest.raises(ConfigError, match=r"bitz.*Did you mean 'bits'"):
        build_plan(_compose("+bitz=4"))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_plans_offline_without_loading_or_writing(experiment, tmp_path):
    """``plan=true`` (issue 12) composes each named study, prices it and writes only plan_out
    (and the token cache it shares with the evaluation, so later plans and runs reuse it)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "plan.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HYDRA_FULL_ERROR="0")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_sweep.py"), f"experiment={experiment}", "plan=true",
         f"plan_out={out}", f"results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / 'hydra'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    plan = json.loads(out.read_text())
    assert {job["family"] for job in plan["jobs"]} == set(_families_named(experiment))
    assert plan["totals"]["cells"] > 0 and plan["totals"]["jobs"] == len(plan["jobs"]) > 0
    assert all(job["cells"] > 0 and job["flops"] > 0 for job in plan["jobs"])
    assert not (tmp_path / "results").exists()  # nothing written, nothing loaded


@pytest.mark.slow
def test_sweeping_experiments_runs_each_experiments_own_grid(tmp_path):
    """``experiment=a,b`` in one command plans exactly the jobs of ``experiment=a`` plus those of
    ``experiment=b``: each with its own list of models (its ``hydra.sweeper.params``), which
    Hydra's primary config, composed without either, does not hold."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", HYDRA_FULL_ERROR="0")

    def plan(experiments: str, tag: str) -> dict:
        out = tmp_path / f"{tag}.json"
        proc = subprocess.run(
            [sys.executable, str(ROOT / "run_sweep.py"), f"experiment={experiments}", "plan=true",
             f"plan_out={out}", f"results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / tag}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return json.loads(out.read_text())

    def jobs(p: dict) -> list[tuple]:
        return [(j["family"], j["size"], j["cells"], j["tokens"]) for j in p["jobs"]]

    both, a, b = plan("kbit_dtypes,gptq_opt", "both"), plan("kbit_dtypes", "a"), plan("gptq_opt", "b")
    assert {j[0] for j in jobs(a)} == set(_families_named("kbit_dtypes")) == {"opt", "pythia", "bloom"}
    assert jobs(both) == jobs(a) + jobs(b)
    assert both["studies"] == a["studies"] + b["studies"]
