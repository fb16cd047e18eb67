"""How far apart the OCP/NVIDIA and ggml roundings of FP4 are on a model's real weights.

``python -m kscale.quant.mx.compare [MODEL_DIR]`` (default: the shared tiny GPT-2) flattens every
floating-point weight of at least 2 dimensions into rows of 64 values, and prints for each pair
(``mxfp4`` vs ``gguf_mxfp4``, ``nvfp4`` vs ``gguf_nvfp4``) each side's relative RMS error
``||q(w) - w|| / ||w||`` and the share of values the two round differently, on the float32
weights and on their bf16 roundings (bf16 values put more of them exactly on a tie).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from kscale.paths import default_data_dir
from kscale.quant.mx import fake_quantize_mx

__all__ = ["PAIRS", "compare_families", "model_weights"]

PAIRS = (("mxfp4", "gguf_mxfp4"), ("nvfp4", "gguf_nvfp4"))
ROW = 64


def model_weights(model_dir: Path) -> torch.Tensor:
    """All weight matrices of a safetensors checkpoint, flattened into float32 rows of 64."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors file in {model_dir}")
    values = [t.detach().float().reshape(-1) for f in files for t in load_file(str(f)).values()
              if t.is_floating_point() and t.dim() >= 2]
    flat = torch.cat(values)
    return flat[: flat.numel() // ROW * ROW].reshape(-1, ROW)


def _rel_rms(q: torch.Tensor, w: torch.Tensor) -> float:
    return float((q - w).norm() / w.norm())


def compare_families(w: torch.Tensor) -> list[dict[str, float | str]]:
    """One dict per pair: ``ocp``, ``ggml`` (names), ``rel_rms_ocp``, ``rel_rms_ggml``, ``differ``."""
    rows = []
    for ocp, ggml in PAIRS:
        a, b = fake_quantize_mx(w, ocp), fake_quantize_mx(w, ggml)
        rows.append({"ocp": ocp, "ggml": ggml, "rel_rms_ocp": _rel_rms(a, w), "rel_rms_ggml": _rel_rms(b, w),
                     "differ": float((a != b).float().mean())})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", nargs="?", default=str(default_data_dir() / "models" / "tiny-gpt2"))
    args = ap.parse_args(argv)
    w = model_weights(Path(args.model_dir))
    print(f"{args.model_dir}: {w.numel()} weight values, std {float(w.std()):.4f}")
    for label, x in (("float32", w), ("bf16", w.to(torch.bfloat16).float())):
        for r in compare_families(x):
            print(f"{label:<8} {r['ocp']:<6} rel RMS {r['rel_rms_ocp']:.4f} | {r['ggml']:<11} rel RMS "
                  f"{r['rel_rms_ggml']:.4f} | values rounded differently {100 * r['differ']:.2f} %")


if __name__ == "__main__":
    main()
