"""Device profiles the plan prices hours and memory with (:data:`DEVICES`).

Kept apart from the cost model so a profile (an assumption about sustained throughput and
memory, named in every plan's output) can be read, overridden (``plan_devices``) or matched
to the local CUDA device without pulling in tokenizers, models or results.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kscale.registry import Registry

GIB = 2**30


@dataclass(frozen=True)
class DeviceProfile:
    """A device for the hour and memory estimates.

    Attributes:
        name: ``plan_device`` value.
        tflops16 / tflops32: *sustained* dense TFLOP/s for 16-bit and 32-bit weights in this
            workload (batch-1, long-sequence forward passes): an assumption, not a datasheet
            figure; ``plan_probe=true`` measures it instead.
        mem_gb: memory of one device (GiB).
        description: where the numbers come from.
        kind: ``gpu`` (a job too large for one is sharded over several with ``device_map=auto``)
            or ``cpu`` (one host's RAM: nothing to shard over, advice names a GPU profile instead).
    """

    name: str
    tflops16: float
    tflops32: float
    mem_gb: float
    description: str = ""
    kind: str = "gpu"

    def rate(self, model_dtype: str) -> float:
        """Sustained FLOP/s for weights stored as ``model_dtype``."""
        return (self.tflops32 if model_dtype == "float32" else self.tflops16) * 1e12


DEVICES: Registry[DeviceProfile] = Registry("plan device")
# Sustained = ~40 % of the dense tensor-core peak (fp16/bf16; TF32 for fp32) of the SXM parts,
# a typical model-FLOP utilisation for inference forward passes of 2048-token windows.
DEVICES.register("h100", DeviceProfile("h100", 400.0, 200.0, 80.0,
                                       "H100 SXM 80GB: 989 dense fp16 TFLOP/s peak x 0.4"))
DEVICES.register("h200", DeviceProfile("h200", 400.0, 200.0, 141.0,
                                       "H200 141GB: H100 compute x 0.4, more memory"))
DEVICES.register("a100", DeviceProfile("a100", 125.0, 62.0, 80.0,
                                       "A100 SXM 80GB: 312 dense fp16 TFLOP/s peak x 0.4"))
DEVICES.register("a100-40gb", DeviceProfile("a100-40gb", 125.0, 62.0, 40.0,
                                            "A100 40GB: 312 dense fp16 TFLOP/s peak x 0.4"))
DEVICES.register("v100", DeviceProfile("v100", 50.0, 6.0, 32.0,
                                       "V100 32GB: 125 fp16 tensor TFLOP/s peak x 0.4; fp32 15.7 x 0.4"))
DEVICES.register("cpu", DeviceProfile("cpu", 0.05, 0.1, 0.0,
                                      "a small multi-core server CPU (fp32 GEMM ~100 GFLOP/s, "
                                      "fp16 slower); memory = this machine's RAM; prefer plan_probe", kind="cpu"))


def device_profile(name: str, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> DeviceProfile:
    """The profile ``name``: ``overrides[name]`` (config ``plan_devices``) over :data:`DEVICES`."""
    overrides = dict(overrides or {})
    if name in overrides:
        base = DEVICES.get(name) if name in DEVICES else DeviceProfile(name, 0.0, 0.0, 0.0)
        extra = dict(overrides[name])
        unknown = sorted(set(extra) - {"tflops16", "tflops32", "mem_gb", "description", "kind"})
        if unknown:
            raise ValueError(f"plan_devices.{name}: unknown keys {unknown}; allowed tflops16, tflops32, "
                             "mem_gb, description, kind")
        if extra.get("kind", "gpu") not in ("gpu", "cpu"):
            raise ValueError(f"plan_devices.{name}.kind must be gpu or cpu; got {extra['kind']!r}")
        prof = replace(base, **{k: (str(v) if k in ("description", "kind") else float(v)) for k, v in extra.items()})
    else:
        prof = DEVICES.get(name)  # unknown -> did-you-mean error
    if prof.name == "cpu" and prof.mem_gb <= 0:
        prof = replace(prof, mem_gb=_host_memory_gb())
    if prof.tflops16 <= 0 or prof.tflops32 <= 0:
        raise ValueError(f"plan device {name!r}: tflops16 and tflops32 must be > 0; got {prof}")
    return prof


def _host_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 0.0


def local_device_name(device: str) -> str:
    """The :data:`DEVICES` profile for a model device string: ``cpu``, or the CUDA device's
    name matched against the profiles (``NVIDIA H100 80GB HBM3`` -> ``h100``), else ``a100``."""
    if not str(device).startswith("cuda"):
        return "cpu"
    try:
        # on use: kscale.estimate imports without torch
        import torch

        label = torch.cuda.get_device_name(torch.device(device)).lower().replace(" ", "")
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory / GIB
    except Exception:  # noqa: BLE001 - no CUDA here: a planning default
        return "a100"
    matches = [n for n in DEVICES.names() if n.split("-")[0] in label and n != "cpu"]
    if not matches:
        return "a100"
    return min(matches, key=lambda n: abs(DEVICES.get(n).mem_gb - total))
