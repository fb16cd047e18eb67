"""How command-line comma lists split into in-job lists and job sweeps."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

ROOT = Path(__file__).resolve().parents[2]


def _sweeper_module():
    # hydra_plugins is a namespace package found from the project root (run_sweep.py's folder)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("hydra_plugins.kscale_sweeper.kscale_sweeper")


def _split(*args):
    mod = _sweeper_module()
    return mod.split_overrides(OverridesParser.create().parse_overrides(list(args)))


def test_quantization_axes_become_lists_and_models_become_jobs():
    out = _split("model=opt,pythia", "bits=3,4,8", "dtype=int,float", "blocksize=64",
                 "model.sizes=125m,350m", "seed=range(0,3)", "eval=toy")
    assert out["bits"] == ["bits=[3,4,8]"]
    assert out["dtype"] == ["dtype=[int,float]"]
    assert out["model.sizes"] == ["model.sizes=[125m,350m]"]
    assert out["seed"] == ["seed=[0,1,2]"]
    assert out["model"] == ["model=opt", "model=pythia"]  # one job group per family
    assert out["blocksize"] == ["blocksize=64"] and out["eval"] == ["eval=toy"]


def test_later_override_of_a_key_wins():
    # experiment params come first, the command line after: the command line replaces them
    out = _split("model=opt,pythia,bloom", "bits=3,4", "model=toy", "bits=8")
    assert out["model"] == ["model=toy"] and out["bits"] == ["bits=8"]
