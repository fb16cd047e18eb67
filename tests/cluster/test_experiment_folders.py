"""experiments/: every named study has a folder, and every command its README shows composes.

A command composes when kscale's own sweeper (hydra_plugins/kscale_sweeper) plans it exactly as
``python run_sweep.py ... plan=true`` would: Hydra composes every job's config, ``build_plan``
validates it (models resolved without the hub, no weights loaded, nothing written), and the
launcher the command names (``-cd experiments/<study> hydra/launcher=slurm`` included) composes.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
FOLDERS = sorted(p for p in (ROOT / "experiments").iterdir() if p.is_dir())
FENCE = re.compile(r"```bash\n(.*?)```", re.S)


def readme_commands(folder: Path) -> list[list[str]]:
    """The ``python run_sweep.py`` commands of a README's bash blocks, as argument lists
    (continuation lines joined, comments dropped, the program name removed)."""
    text = (folder / "README.md").read_text()
    commands = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["python", "run_sweep.py"]:
                commands.append(words[2:])
    return commands


def hydra_arguments(words: list[str]) -> list[str]:
    """``-cd DIR`` / ``--config-dir DIR`` become the search-path override Hydra derives from them."""
    out, i = [], 0
    while i < len(words):
        if words[i] in ("-cd", "--config-dir"):
            out.append(f"hydra.searchpath=[file://{(ROOT / words[i + 1]).resolve()}]")
            i += 2
            continue
        if words[i].startswith("-"):
            raise AssertionError(f"a README command uses a flag the test does not know: {words[i]}")
        out.append(words[i])
        i += 1
    return out


def _sweep_config(loader, args: list[str]):
    return loader.load_configuration("sweep", args, RunMode.MULTIRUN)


def plan_command(arguments: list[str], results_dir: Path):
    """The sweeper's plan of a command (``plan=true``, rows read from an empty results_dir):
    ``(jobs, plans, every model, composed primary config)``."""
    from hydra_plugins.kscale_sweeper.kscale_sweeper import KscaleSweeper

    args = [*arguments, "plan=true", f"results_dir={results_dir}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        config = _sweep_config(loader, args)
        params = config.hydra.sweeper.get("params")
        sweeper = KscaleSweeper(params=OmegaConf.to_container(params) if params else None)
        sweeper.hydra_context = HydraContext(config_loader=loader, callbacks=None)
        sweeper.config = config
        jobs, plans = sweeper.plan_jobs(args)
        return jobs, plans, sweeper.all_models, config


def launcher_config(arguments: list[str]):
    """The ``hydra.launcher`` node a command composes (no plan: cheap)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return _sweep_config(GlobalHydra.instance().config_loader(), list(arguments)).hydra.launcher


#: settings that change where a study runs or whether it is only planned, not what it is
_NOT_THE_PLAN = ("hydra/launcher", "hydra.launcher.", "hydra.searchpath", "plan", "plan_device", "plan_out",
                 "plan_probe", "results_dir")


def plan_key(arguments: list[str]) -> tuple[str, ...]:
    """Commands that differ only in launcher or planning settings plan the same jobs: planned once."""
    return tuple(a for a in arguments
                 if not (a.startswith(_NOT_THE_PLAN[:3]) or a.split("=", 1)[0] in _NOT_THE_PLAN[3:]))


_PLANNED: dict[tuple[str, ...], int] = {}


COMMANDS = [(folder.name, i, words) for folder in FOLDERS for i, words in enumerate(readme_commands(folder))]


def test_every_experiment_has_its_folder_and_every_folder_its_readme():
    assert FOLDERS, "experiments/ has no study folders"
    run = {}
    for folder in FOLDERS:
        assert (folder / "README.md").is_file(), f"{folder} has no README.md"
        commands = readme_commands(folder)
        assert commands, f"{folder}/README.md shows no `python run_sweep.py` command"
        text = (folder / "README.md").read_text()
        assert "plan=true" in text and re.search(r"\d+ cells", text), f"{folder}: no plan=true cost"
        assert (folder / "hydra" / "launcher" / "slurm.yaml").is_file(), f"{folder}: no launcher file"
        slurm = [c for c in commands if "hydra/launcher=slurm" in c]
        assert slurm and all(f"experiments/{folder.name}" in c for c in slurm), (
            f"{folder}: its SLURM command must load the folder's launcher (-cd experiments/{folder.name})")
        for words in commands:
            for w in words:
                if w.startswith("experiment="):
                    run.setdefault(w.split("=", 1)[1], folder.name)
    missing = [e for e in EXPERIMENTS if e not in run]
    assert not missing, f"conf/experiment/{missing[0]}.yaml has no experiments/ folder running it"


@pytest.mark.slow
@pytest.mark.parametrize("folder, index, words", COMMANDS,
                         ids=[f"{f}-{i}" for f, i, _ in COMMANDS])
def test_every_readme_command_composes_offline(folder, index, words, tmp_path):
    arguments = hydra_arguments(words)
    launcher = launcher_config(arguments)
    if "hydra/launcher=slurm" in words:
        assert launcher._target_.endswith("SlurmLauncher")
        assert launcher.max_num_timeout > 0  # a job at its time limit is requeued, not ended
    key = plan_key(arguments)
    if key not in _PLANNED:
        jobs, plans, models, _ = plan_command(list(key), tmp_path / "results")
        assert models and all(plan.cells for plan in plans.values())
        assert len(jobs) == len(models)  # an empty results_dir: every model is a job to run
        assert not (tmp_path / "results").exists()  # nothing written
        _PLANNED[key] = len(models)
    assert _PLANNED[key] > 0
