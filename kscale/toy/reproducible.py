"""Bit-reproducible toy training: CPU rungs train in a child process whose numerics are pinned.

Why (issue 17 §2): the same rung trained on two machines reached two different sets of weights,
although one machine always reproduced itself. The code paths that depend on the CPU were
measured on one AMD EPYC (AVX-512) machine, training a 2-layer d24 rung for 50 steps in fresh
processes and hashing ``model.safetensors``:

* ATen picks its vectorised kernels (softmax, layer norm, reductions, AdamW's foreach ops) by
  the best instruction set the CPU has, ``ATEN_CPU_CAPABILITY`` = avx512 / avx2 / default:
  **three different weight files**. An AVX-512 machine and an AVX2-only one therefore disagree.
* MKL picks its GEMM code branch by CPU as well: ``MKL_CBWR=COMPATIBLE`` gives **another** file
  (``MKL_CBWR=AVX2`` matched the default here, since MKL runs its AVX2 branch on AMD; on an
  Intel AVX-512 machine its default is the AVX-512 branch, a different reduction order).
* Two intra-op threads instead of one: **another** file (OpenMP splits the reductions).
* oneDNN (``torch.backends.mkldnn``) on or off: no change for float32 training; kept off.

Both selections are made once per process (ATen at its first kernel dispatch, MKL at its first
call), so they cannot be changed after torch has run anything: the trainer runs in a child
process started with :data:`PINNED_ENV` (ATen's AVX2 kernels, MKL's ``COMPATIBLE`` branch, the
one Intel documents as giving the same results on every x86-64 CPU, Intel or not; one thread).
Every x86-64 CPU since 2013 (Haswell, Zen) has AVX2; on one without it ATen falls back to its
scalar kernels, the child logs a warning, and ``train_stats.json`` records the capability
actually used (``numerics``). Measured cost: no slower per step than the unpinned default
(L2-d64, 165 steps, load ~14: 327-462 ms/step either way), plus one interpreter start per
:meth:`~kscale.toy.ladder.ToyProvider.ensure` call (all missing rungs train in the same child).

What the weights then depend on is exactly what :func:`numerics_key` puts into the cache key:
the pinned settings, the thread count, and the torch and transformers versions.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The environment of the training child. ATen and MKL read these once, at their first use.
PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
}

#: The child's program (``-c``, not ``-m``: the package already imports this module).
_CHILD_MAIN = "import sys; from kscale.toy.child import main; sys.exit(main(sys.argv[1:]))"

#: Set in the child, so its ToyProvider trains in-process instead of starting another child.
CHILD_FLAG = "KSCALE_TOY_PINNED_CHILD"


def numerics_key(device: str, threads: int) -> dict[str, Any]:
    """What a rung's weights depend on beyond its options: part of the cache key.

    CPU: the pinned kernel selection, the thread count and the library versions. Other devices
    (CUDA, MPS) are not pinned; their weights depend on the device type too, so it is recorded.
    """
    libs = _library_versions()
    if device_type(device) == "cpu":
        return {**libs, "device": "cpu", "threads": int(threads),
                **{k.lower(): v for k, v in PINNED_ENV.items()}}
    return {**libs, "device": device_type(device)}


@lru_cache(maxsize=1)
def _library_versions() -> dict[str, str]:
    """Installed torch and transformers versions (read once: the cache key is computed often)."""
    return {"torch": version("torch"), "transformers": version("transformers")}


def device_type(device: str) -> str:
    """``cuda:1`` -> ``cuda``."""
    return str(device).split(":", 1)[0]


def in_pinned_child() -> bool:
    """True inside the training child (its environment was pinned before torch started)."""
    return os.environ.get(CHILD_FLAG) == "1"


def child_env(threads: int) -> dict[str, str]:
    """The parent's environment with the numerics pinned and ``threads`` OpenMP/MKL threads; the
    folder holding this ``kscale`` goes first on ``PYTHONPATH``, so the child imports the same
    code as the parent wherever either was started from."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **PINNED_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONPATH": path, CHILD_FLAG: "1"}


def train_in_child(options: Mapping[str, Any], sizes: Sequence[str], revisions: Sequence[str | None],
                   threads: int) -> int:
    """Run :meth:`ToyProvider.ensure` for ``sizes`` in a pinned child; returns the rungs it trained.

    The child inherits stderr (progress bars and its error, if any, appear as they happen).
    """
    request = {"options": dict(options), "sizes": list(sizes), "revisions": list(revisions)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_MAIN, json.dumps(request)],
        env=child_env(threads), stdout=subprocess.PIPE, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"training the toy rungs {list(sizes)} failed in the pinned training process (exit code "
            f"{proc.returncode}); its error is printed above")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return int(json.loads(lines[-1])["n_trained"]) if lines else 0


def observed_numerics() -> dict[str, Any]:
    """The numerics this process actually trains with (written to ``train_stats.json``)."""
    import torch

    return {
        "torch": torch.__version__, "transformers": version("transformers"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"), "threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.enabled), "pinned_child": in_pinned_child(),
    }


def configure_child() -> None:
    import torch

    torch.backends.mkldnn.enabled = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PINNED_ENV["ATEN_CPU_CAPABILITY"].upper():
        log.warning("this CPU runs ATen's %s kernels, not the pinned %s ones: toy weights trained here "
                    "will not be bit-identical to other machines' (recorded in train_stats.json)",
                    capability, PINNED_ENV["ATEN_CPU_CAPABILITY"].upper())
