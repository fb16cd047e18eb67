"""Where a model runs and in which dtype, resolved before anything loads.

``auto`` is the default for both, because the right answer depends on the machine, not the
study: fp16 matmuls on a CPU are emulated (a tiny GPT-2 takes 60-80 s a cell in float16 where
float32 takes a few), and a config saying ``cuda`` on a machine without CUDA should be a one-line
error, not a torch traceback after the model has loaded. The resolved values are what result
rows record (``model_dtype``, ``device``).
"""
from __future__ import annotations

import torch

#: dtype names a user may ask for; ``auto`` resolves per device.
MODEL_DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16", "checkpoint")


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def resolve_device(device: str | None) -> str:
    """``auto``/None -> ``cuda`` when CUDA is present, else ``cpu``; an explicit CUDA device on a
    machine without CUDA raises ``ValueError`` saying what to set."""
    if device in (None, "", "auto"):
        return "cuda" if cuda_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not cuda_available():
        raise ValueError(
            f"model.device={device}, but this torch build sees no CUDA device "
            "(torch.cuda.is_available() is False); set model.device=auto (CUDA when present, "
            "else CPU) or model.device=cpu"
        )
    return device


def resolve_dtype(dtype: str | None, device: str) -> str:
    """``auto``/None -> float16 on CUDA, float32 elsewhere; ``checkpoint`` keeps the checkpoint's
    own dtype (transformers' ``torch_dtype="auto"``); other names pass through, validated."""
    if dtype in (None, "", "auto"):
        return "float16" if str(device).startswith("cuda") else "float32"
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"model.dtype must be one of {', '.join(MODEL_DTYPES)}; got {dtype!r}")
    return "auto" if dtype == "checkpoint" else str(dtype)
