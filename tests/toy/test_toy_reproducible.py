"""Toy weights are a function of the cache key (issue 17 §2): bitwise, across processes and CPU paths.

The pinned trainer (kscale.toy.reproducible) runs in a child process whose ATen kernel set, MKL
branch and thread count are fixed, whatever the parent's environment says. "Another machine" is
simulated by the parent environment a different machine would have by default: ATen's scalar
kernels instead of AVX-512, MKL's automatic branch, two OpenMP threads. The control shows what
the pin removes: *unpinned* training under two ATen capabilities gives different weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kscale.toy.ladder import CACHE_FORMAT, ToyOptions, ToyProvider
from kscale.toy.reproducible import PINNED_ENV, numerics_key, train_in_child

# two tiny rungs of different depth (a few seconds of training each on one core)
OPTIONS = {
    "ladder": {"a": {"n_layer": 1, "d_model": 8, "n_head": 2, "batch_size": 8},
               "b": {"n_layer": 2, "d_model": 16, "n_head": 2, "batch_size": 8}},
    "tokens_per_param": 2, "snapshots": 1, "progress": False, "language": {"vocab_size": 32},
}


def _digests(cache: Path) -> dict[str, str]:
    opts = ToyOptions.from_mapping(OPTIONS)
    return {s: hashlib.sha256((cache / "toy" / opts.key() / s / "model.safetensors").read_bytes()).hexdigest()
            for s in opts.ladder}


def _train_pinned(cache: Path, monkeypatch, **parent_env: str) -> dict[str, str]:
    with monkeypatch.context() as m:
        m.setenv("KSCALE_CACHE_DIR", str(cache))
        for k, v in parent_env.items():
            m.setenv(k, v)
        opts = ToyOptions.from_mapping(OPTIONS)
        assert train_in_child(opts.to_mapping(), list(opts.ladder), [], opts.threads) == 2
    return _digests(cache)


_UNPINNED = """
import hashlib, sys, tempfile
from pathlib import Path
from kscale.toy.ladder import ToyOptions, train_checkpoint
opts = ToyOptions.from_mapping({options})
out = Path(tempfile.mkdtemp())
train_checkpoint("b", opts, out)
print(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
"""


def _train_unpinned(capability: str) -> str:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _UNPINNED.format(options=repr(OPTIONS))], env=env,
                          capture_output=True, text=True, check=True)
    return proc.stdout.split()[-1]


@pytest.mark.slow
def test_pinned_training_is_bitwise_identical_across_processes_and_cpu_paths(tmp_path, monkeypatch):
    first = _train_pinned(tmp_path / "one", monkeypatch)
    again = _train_pinned(tmp_path / "two", monkeypatch)
    foreign = _train_pinned(tmp_path / "three", monkeypatch, ATEN_CPU_CAPABILITY="default", MKL_CBWR="AUTO",
                            OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    assert first == again == foreign
    stats = json.loads((tmp_path / "three" / "toy" / ToyOptions.from_mapping(OPTIONS).key() / "b"
                        / "train_stats.json").read_text())
    assert stats["numerics"]["cpu_capability"] == "AVX2"  # the pin won over the parent's "default"
    assert stats["numerics"]["mkl_cbwr"] == "COMPATIBLE" and stats["numerics"]["threads"] == 1
    # the cause the pin removes: ATen's kernel set changes the weights of an unpinned run
    assert _train_unpinned("avx2") != _train_unpinned("default")


def test_the_cache_key_names_what_the_weights_depend_on():
    base = ToyOptions.from_mapping(OPTIONS)
    assert CACHE_FORMAT >= 2  # caches trained before the pin are stale
    assert numerics_key("cpu", 1)["aten_cpu_capability"] == PINNED_ENV["ATEN_CPU_CAPABILITY"]
    assert numerics_key("cpu", 1)["mkl_cbwr"] == "COMPATIBLE"
    threads = ToyOptions.from_mapping({**OPTIONS, "num_threads": 2})
    cuda = ToyOptions.from_mapping({**OPTIONS, "device": "cuda"})
    assert len({base.key(), threads.key(), cuda.key()}) == 3
    assert ToyOptions.from_mapping({**OPTIONS, "device": "cuda:1"}).key() == cuda.key()
    assert ToyOptions.from_mapping({**OPTIONS, "num_threads": 1}).key() == base.key()  # None = 1
    assert ToyOptions.from_mapping(base.to_mapping()) == base  # what the child receives
    with pytest.raises(ValueError, match="num_threads"):
        ToyOptions.from_mapping({**OPTIONS, "num_threads": 0})


def test_a_cached_ladder_starts_no_training_process(tmp_path, monkeypatch):
    """ensure() on a complete cache trains nothing and starts no child (the sweep's common case)."""
    import kscale.toy.ladder as ladder

    monkeypatch.setenv("KSCALE_CACHE_DIR", str(tmp_path))
    opts = ToyOptions.from_mapping(OPTIONS)
    for size in opts.ladder:  # fake a complete cache: the stats file marks a finished checkpoint
        (tmp_path / "toy" / opts.key() / size).mkdir(parents=True)
        (tmp_path / "toy" / opts.key() / size / "train_stats.json").write_text("{}")

    def no_child(*args, **kwargs):
        raise AssertionError("a training process was started for a cached ladder")

    monkeypatch.setattr(ladder, "train_in_child", no_child)
    provider = ToyProvider()
    assert set(provider.ensure(None, OPTIONS)) == {"a", "b"} and provider.n_trained == 0
