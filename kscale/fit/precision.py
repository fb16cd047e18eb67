"""Kumar et al.'s unified precision law (ICLR 2025, "Scaling Laws for Precision"), registered as ``precision``.

One law for the loss of a model trained with weights, activations and KV cache at P_w, P_a, P_kv
bits and then quantized to P_post weight bits:

    L = A · N_eff^(−α) + B · D^(−β) + E + δ_PTQ                                  (Eq. 3, §5)
    N_eff = N · (1 − e^(−P_w/γ_w)) · (1 − e^(−P_a/γ_a)) · (1 − e^(−P_kv/γ_kv))   (Eq. 4-5)
    δ_PTQ = C_T · e^(−P_post/γ_post) · D^γ_D / N_eff^γ_N · [1 − e^(−C_w·(P_w − P_post))]   (Eq. 2, 8-11)

Why this shape: low-precision training acts like fewer parameters (N_eff), saturating in each
precision with its own γ — the larger γ_x, the more bits part x needs, so γ answers "which part is
most sensitive". The post-training term is Eq. 2's exponential-in-bits, power-in-D/N degradation
with N replaced by N_eff, times the "robustification" factor: a model already trained at P_w bits
loses less when quantized to P_post < P_w, and nothing when P_post ≥ P_w (the factor is clamped to
0 there; the paper only defines it for P_post < P_train). Post-training quantization here is of
weights only, as in the paper's experiments (its activation and KV robustification factors are 1
for parts not quantized after training, "C_x = ∞"), so only C_w appears.

Columns: ``n_params`` (N), ``n_tokens`` (D), ``train_bits_w``/``train_bits_a``/``train_bits_kv``
(training precisions, 16 = full precision), ``bits`` (post-training weight bits; 16 = not
quantized). The paper's fits add offsets inside the saturations (e^(P/γ + n), App. K); this form
follows the issue without them, so γ here absorbs the offset.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from kscale.fit.laws import _EXPONENT_BOUNDS, _SIGNED_BOUNDS, Law, _e_grid, _lse, register_law

#: Training-precision columns, in the order of N_eff's factors, with their γ parameter.
TRAIN_BITS = {"train_bits_w": "gamma_w", "train_bits_a": "gamma_a", "train_bits_kv": "gamma_kv"}
#: Exponents of the law (parameters that multiply a log or divide a precision); the tests flip each.
EXPONENTS = ("alpha", "beta", "gamma_D", "gamma_N", "gamma_w", "gamma_a", "gamma_kv", "gamma_post", "C_w")


def _log_saturation(bits: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """log(1 − e^(−P/γ)), written with expm1 so 16-bit (factor ≈ 1) keeps its precision."""
    return torch.log(-torch.expm1(-bits / gamma))


def log_effective_params(p, x) -> torch.Tensor:
    """log N_eff = log N + Σ_x log(1 − e^(−P_x/γ_x)) (Kumar et al. Eq. 4-5)."""
    out = torch.log(x["n_params"])
    for column, gamma in TRAIN_BITS.items():
        out = out + _log_saturation(x[column], p[gamma])
    return out


def log_ptq_degradation(p, x, log_neff: torch.Tensor) -> torch.Tensor:
    """log δ_PTQ, −inf where the weights are not quantized below their training precision."""
    gap = x["train_bits_w"] - x["bits"]
    quantized = gap > 0
    # a safe gap where nothing is quantized keeps the masked branch (and its gradient) finite
    safe_gap = torch.where(quantized, gap, torch.ones_like(gap))
    log_delta = (torch.log(p["C_T"]) - x["bits"] / p["gamma_post"] + p["gamma_D"] * torch.log(x["n_tokens"])
                 - p["gamma_N"] * log_neff + torch.log(-torch.expm1(-p["C_w"] * safe_gap)))
    return torch.where(quantized, log_delta, torch.full_like(log_delta, -math.inf))


def log_precision_loss(p, x) -> torch.Tensor:
    """log(A·N_eff^−α + B·D^−β + E + δ_PTQ), one logsumexp so no term overflows."""
    log_neff = log_effective_params(p, x)
    return _lse(
        torch.log(p["E"]),
        torch.log(p["A"]) - p["alpha"] * log_neff,
        torch.log(p["B"]) - p["beta"] * torch.log(x["n_tokens"]),
        log_ptq_degradation(p, x, log_neff),
    )


#: Kumar et al.'s fitted constants (Table 2 / App. K; b read as the robustification constant C_w).
#: Their offsets n_x are not part of this form; the values are a reference for orders of magnitude.
PAPER_CONSTANTS = {
    "A": 4.299e3, "alpha": 0.4965, "B": 1.806e4, "beta": 0.4965, "E": 2.7648,
    "gamma_w": 2.6745, "gamma_a": 2.2102, "gamma_kv": 0.9578,
    "C_T": 0.0598, "gamma_D": 0.5068, "gamma_N": 0.3439, "gamma_post": 0.5907, "C_w": 1.1277,
}

PRECISION = register_law(Law(
    name="precision",
    irreducible=("E",),
    formula="L = A·N_eff^(−α) + B·D^(−β) + E + C_T·e^(−P_post/γ_post)·D^γ_D/N_eff^γ_N·[1 − e^(−C_w(P_w − P_post))]₊, "
            "N_eff = N·Π_{x∈w,a,kv}(1 − e^(−P_x/γ_x))",
    params=("E", "A", "alpha", "B", "beta", "gamma_w", "gamma_a", "gamma_kv",
            "C_T", "gamma_D", "gamma_N", "gamma_post", "C_w"),
    columns=("n_params", "n_tokens", "train_bits_w", "train_bits_a", "train_bits_kv", "bits"),
    log_predict=log_precision_loss,
    positive=("E", "A", "B", "gamma_w", "gamma_a", "gamma_kv", "C_T", "gamma_post", "C_w"),
    # A small grid (288 starts): L-BFGS-B refines the 8 best; the γ's start where precision matters
    grid={"E": _e_grid, "A": (1e1, 1e3, 1e5), "alpha": (0.2, 0.5), "B": (1e1, 1e3), "beta": (0.2, 0.5),
          "gamma_w": (2.0,), "gamma_a": (2.0,), "gamma_kv": (2.0,), "C_T": (1e-3, 1e-1),
          "gamma_D": (0.5,), "gamma_N": (0.3,), "gamma_post": (0.5, 1.5), "C_w": (1.0,)},
    bounds={"alpha": _EXPONENT_BOUNDS, "beta": _EXPONENT_BOUNDS, "gamma_D": _SIGNED_BOUNDS,
            "gamma_N": _SIGNED_BOUNDS},
    precision_params=("gamma_w", "gamma_a", "gamma_kv", "gamma_post", "C_w"),
    varies_any=tuple(TRAIN_BITS),
    description="Kumar et al. 2025 ('Scaling Laws for Precision', Eq. 2-5 and the unified §5 form, "
    "Eq. 8-11): training precision shrinks the effective parameter count; post-training quantization "
    "adds δ_PTQ, smaller for models trained nearer the post-training precision (robustification). "
    "They fit γ_w ≈ 2.67, γ_a ≈ 2.21, γ_kv ≈ 0.96 with offsets (App. K) and find 7-8 training bits "
    "compute-optimal.",
))


def capacity_per_bit(params, bits):
    """N_eff / (N · P) with all three parts trained at P bits: what a parameter-bit buys.

    Under Kumar et al.'s cost model (training compute ∝ N · D · P, "bit-FLOPs", §4.3) the
    pre-training loss at a budget C is A·(C·g(P)/D)^−α + B·D^−β + E with g(P) = this quantity,
    so the compute-optimal training precision maximises g whatever C is (the paper's "roughly
    independent of compute"). ``params`` maps γ_w, γ_a, γ_kv to numbers or arrays (bootstrap).
    """
    bits = np.asarray(bits, dtype=float)
    out = 1.0 / bits
    for gamma in TRAIN_BITS.values():
        out = out * -np.expm1(-bits / np.asarray(params[gamma], dtype=float)[..., None])
    return out


def compute_optimal_training_bits(params, *, lo: float = 1.0, hi: float = 16.0, n: int = 1501):
    """The training precision (all of w, a, kv at P bits, P on a grid of ``n`` points in [lo, hi])
    minimising the pre-training loss at any fixed budget of bits × FLOPs (N · D · P); an array
    of them when ``params`` holds bootstrap arrays."""
    grid = np.linspace(lo, hi, n)
    return grid[np.argmax(capacity_per_bit(params, grid), axis=-1)]
