"""Issue 18 §4: the per-format offset law recovers known offsets, the ranking probabilities are
right on a clear case and ~0.5 on a tie, and runtime-precision rows never enter the weight fits."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kscale.fit.formats import fit_format_offsets, format_key, rank_formats

E, A, ALPHA = 2.5, 9.0, 0.35
OFFSETS = {"nf-B64": 0.0, "q4_0": 0.12, "mxfp4": 0.30, "nvfp4": -0.08}
SIZES = {"s1": 1e4, "s2": 2e4, "s3": 4e4, "s4": 8e4}


def _rows(noise_sd: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for size, n in SIZES.items():
        rows.append(dict(size=size, n_params=n, format=None, dtype=None, bits=16, total_bits=16 * n))
        for k in (3, 4, 5, 6, 8):
            rows.append(dict(size=size, n_params=n, format="blockwise", dtype="nf", blocksize=64, bits=k,
                             total_bits=(k + 0.25) * n))
        for fmt, bpp in (("q4_0", 4.5), ("mxfp4", 4.25), ("nvfp4", 4.5)):
            rows.append(dict(size=size, n_params=n, format=fmt, bits=4, total_bits=bpp * n))
    df = pd.DataFrame(rows).assign(status="ok")
    keys = [format_key(r) for _, r in df.iterrows()]
    c = np.array([OFFSETS.get(k, 0.0) for k in keys])
    z = math.log(A) - ALPHA * np.log(df["total_bits"].to_numpy()) + c + rng.normal(0, noise_sd, len(df))
    return df.assign(nll_toy=E + np.exp(z))


def test_format_key_names_blockwise_by_dtype_and_block():
    assert format_key(pd.Series({"format": "blockwise", "dtype": "nf", "blocksize": 64.0})) == "nf-B64"
    assert format_key(pd.Series({"format": None, "dtype": "float", "blocksize": 64})) == "float-B64"
    assert format_key(pd.Series({"format": "q4_0", "imatrix": True})) == "q4_0-imatrix"
    assert format_key(pd.Series({"format": "mxfp4", "imatrix": float("nan")})) == "mxfp4"


def test_offsets_are_recovered_exactly_without_noise():
    fit = fit_format_offsets(_rows(), "nll_toy", E=E, n_bootstrap=0, reference="nf-B64")
    assert fit.alpha == pytest.approx(ALPHA, abs=1e-9) and fit.a == pytest.approx(math.log(A), abs=1e-8)
    for f, c in OFFSETS.items():
        assert fit.offsets[f] == pytest.approx(c, abs=1e-9)
    # a bit of q4_0 is worth exp(-0.12/0.35) = 0.71 bits of nf-B64
    assert fit.bits_worth["q4_0"] == pytest.approx(math.exp(-0.12 / ALPHA))


def test_offsets_with_noise_fall_in_their_intervals_and_E_is_profiled():
    df = _rows(noise_sd=0.01, seed=1)
    fit = fit_format_offsets(df, "nll_toy", E=E, n_bootstrap=300, reference="nf-B64")
    for f, c in OFFSETS.items():
        lo, hi = fit.intervals[f]
        assert lo <= c <= hi, (f, lo, c, hi)
        assert abs(fit.offsets[f] - c) < 0.03
    free = fit_format_offsets(_rows(), "nll_toy", n_bootstrap=0, reference="nf-B64")
    assert not free.E_known and free.E == pytest.approx(E, rel=0.02)
    assert free.offsets["mxfp4"] == pytest.approx(0.30, abs=0.02)


def test_runtime_precision_rows_do_not_enter_the_weight_law():
    df = _rows()
    worse = df[df["bits"] < 16].assign(act_bits=8, kv_bits=16, nll_toy=lambda d: d["nll_toy"] + 0.5)
    mixed = pd.concat([df.assign(act_bits=16, kv_bits=16), worse], ignore_index=True)
    fit = fit_format_offsets(mixed, "nll_toy", E=E, n_bootstrap=0, reference="nf-B64")
    assert fit.n_rows == int((df["bits"] < 16).sum())
    assert fit.offsets["q4_0"] == pytest.approx(0.12, abs=1e-9)
    ranking = rank_formats(mixed, "nll_toy", [5e5], noise=0.0, n_bootstrap=0)
    assert ranking.table["value"].min() < worse["nll_toy"].min()


def test_ranking_probability_on_a_clear_case_and_on_a_tie():
    rows = pd.DataFrame([
        dict(size="s", format="q4_0", bits=4, total_bits=1000.0, nll_toy=3.00, status="ok"),
        dict(size="s", format="q4_1", bits=4, total_bits=1000.0, nll_toy=3.00, status="ok"),  # tie with q4_0
        dict(size="s", format="mxfp4", bits=4, total_bits=1000.0, nll_toy=3.10, status="ok"),  # 10 SE worse
        dict(size="s", format="q8_0", bits=8, total_bits=2000.0, nll_toy=2.80, status="ok"),  # over budget 1500
    ])
    r = rank_formats(rows, "nll_toy", [1500.0, 2500.0], noise=0.01, n_bootstrap=4000, seed=0).table
    at = r[r["budget"] == 1500.0].set_index("format")
    assert set(at.index) == {"q4_0", "q4_1", "mxfp4"}  # q8_0 does not fit the budget
    assert at.loc["q4_0", "p_best"] == pytest.approx(0.5, abs=0.03)
    assert at.loc["q4_1", "p_best"] == pytest.approx(0.5, abs=0.03)
    assert at.loc["mxfp4", "p_best"] == 0.0 and at.loc["mxfp4", "rank"] == 3
    big = r[r["budget"] == 2500.0].set_index("format")
    assert big.loc["q8_0", "rank"] == 1 and big.loc["q8_0", "p_best"] == pytest.approx(1.0)
    # P(best) sums to one at every budget
    assert np.allclose(r.groupby("budget")["p_best"].sum(), 1.0)
