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
