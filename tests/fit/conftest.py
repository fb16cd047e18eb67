"""Synthetic studies with known parameters for the fit/pareto/plot/report tests."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

#: Ground truth of the synthetic "offset" study: 4-bit is optimal at every budget.
OFFSET_TRUTH = {"E": 1.5, "A": 100.0, "alpha": 0.3, "c_3": -0.5, "c_4": -0.9, "c_5": -0.85, "c_6": -0.8, "c_8": -0.6}
BITS = (3, 4, 5, 6, 8, 16)


def bits_per_param(k: float, blocksize: int = 64) -> float:
    return 16.0 if k == 16 else k + 16.0 / blocksize


def synth_study(law: str = "offset", *, n_sizes: int = 6, noise: float = 0.003, seed: int = 0,
                truth: dict | None = None) -> pd.DataFrame:
    """Rows like kscale.results', with nll_toy drawn from ``law`` times lognormal noise."""
    rng = np.random.default_rng(seed)
    truth = truth or OFFSET_TRUTH
    rows = []
    for n in np.geomspace(1e6, 1e8, n_sizes):
        for k in BITS:
            bpp = bits_per_param(k)
            T = n * bpp
            if law == "offset":
                c = truth.get(f"c_{k}", 0.0)
                L = truth["E"] + truth["A"] * T ** -truth["alpha"] * np.exp(c)
            elif law == "power":
                L = truth[f"E_{k}"] + truth[f"A_{k}"] * T ** -truth[f"alpha_{k}"]
            elif law == "neff":
                L = truth["E"] + truth["A"] * (n * (1 - np.exp(-k / truth["gamma"]))) ** -truth["alpha"]
            else:
                raise ValueError(law)
            rows.append(dict(family="toy", size=f"{n:.2g}", checkpoint="synthetic", n_params=n, method="rtn",
                             dtype="int", bits=k, blocksize=64, centered=False, exponent_bits=None, scale_bits=16,
                             outlier_frac=0.0, seed=0, bits_per_param=bpp, total_bits=T, n_quantized=n,
                             nll_toy=L * np.exp(rng.normal(0, noise)), status="ok", key=f"{n:.3g}-{k}"))
    df = pd.DataFrame(rows)
    df["ppl_toy"] = np.exp(df["nll_toy"])
    return df


@pytest.fixture
def offset_study() -> pd.DataFrame:
    return synth_study("offset")


@pytest.fixture
def synth():
    """The :func:`synth_study` generator (test modules cannot import conftest under importlib mode)."""
    return synth_study


@pytest.fixture
def offset_truth() -> dict:
    return dict(OFFSET_TRUTH)


#: Ground truth of the synthetic training-tokens study (degradation from Ouyang et al.'s form).
QID_TRUTH = {"k": 0.05, "alpha": 0.3, "beta": 0.5, "gamma": 5.0}
PTQ_TRUTH = {"C_T": 0.01, "gamma_D": 0.5, "gamma_N": 0.35, "gamma_post": 1.5}
TOKEN_BITS = (2, 3, 4, 6, 8, 16)


def qid_delta(n, d, p, t=QID_TRUTH):
    """ΔL = k · D^β / (N^α · P^γ), written out independently of kscale's law."""
    return t["k"] * d ** t["beta"] / (n ** t["alpha"] * p ** t["gamma"])


def ptq_delta(n, d, p, t=PTQ_TRUTH):
    """δ = C_T · e^(−P/γ_post) · D^γ_D / N^γ_N, written out independently of kscale's law."""
    return t["C_T"] * np.exp(-p / t["gamma_post"]) * d ** t["gamma_D"] / n ** t["gamma_N"]


def synth_tokens_study(law: str = "qid", *, truth: dict | None = None, noise: float = 0.01, seed: int = 0,
                       sizes=(2e3, 8e3, 3.2e4, 1.28e5), tokens=(1e4, 4e4, 1.6e5, 6.4e5, 2.56e6),
                       bits=TOKEN_BITS, entropy_rate: float | None = 0.9) -> pd.DataFrame:
    """Rows of a toy_tokens-like study: every size at several training-token checkpoints.

    The 16-bit loss follows Chinchilla (E + A/N^α + B/D^β); a k-bit cell adds the degradation of
    ``law`` times lognormal noise, so ``add_delta`` recovers exactly the noisy degradation.
    """
    rng = np.random.default_rng(seed)
    fn = {"qid": qid_delta, "ptq": ptq_delta}[law]
    truth = truth or {"qid": QID_TRUTH, "ptq": PTQ_TRUTH}[law]
    rows = []
    for n in sizes:
        for d in tokens:
            base = 0.9 + 10.0 * n ** -0.35 + 10.0 * d ** -0.3
            for k in bits:
                dl = 0.0 if k == 16 else fn(n, d, float(k), truth) * np.exp(rng.normal(0, noise))
                rows.append(dict(
                    family="toy", size=f"n{n:g}", checkpoint=f"toy/n{n:g}", revision=f"tokens-{d:g}", n_tokens=d,
                    n_params=n, method="none" if k == 16 else "rtn", dtype="int", bits=k, blocksize=64,
                    bits_per_param=16.0 if k == 16 else k + 0.25, total_bits=n * (16.0 if k == 16 else k + 0.25),
                    eval_name="toy", nll_toy=base + dl, status="ok", key=f"{n:g}-{d:g}-{k}"))
    df = pd.DataFrame(rows)
    df["ppl_toy"] = np.exp(df["nll_toy"])
    if entropy_rate is not None:
        df["entropy_rate"] = entropy_rate
    return df


@pytest.fixture
def tokens_study():
    """The :func:`synth_tokens_study` generator."""
    return synth_tokens_study


@pytest.fixture
def qid_reference():
    return {"qid": (qid_delta, dict(QID_TRUTH)), "ptq": (ptq_delta, dict(PTQ_TRUTH))}
