"""Kumar et al.'s unified precision law (issue 20 §3): the formula against a hand-written reference,
parameter recovery from data the law generated, and a recovery check that fails for every
sign-flipped exponent."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from kscale.fit import LAWS, bootstrap_law, fit_law
from kscale.fit.precision import EXPONENTS, PAPER_CONSTANTS

#: A toy-scale truth in which every term is visible above 0.2 % noise.
TRUTH = {"E": 1.0, "A": 30.0, "alpha": 0.35, "B": 200.0, "beta": 0.4, "gamma_w": 2.7, "gamma_a": 2.2,
         "gamma_kv": 2.0, "C_T": 0.06, "gamma_D": 0.5, "gamma_N": 0.35, "gamma_post": 1.0, "C_w": 1.1}
#: The toy_precision design: one training precision varied at a time, every PTQ bits for each.
TRAIN_VARIANTS = ([(w, 16, 16) for w in (3, 4, 6, 8, 16)] + [(16, a, 16) for a in (4, 8)]
                  + [(16, 16, kv) for kv in (4, 8)])
POST_BITS = (3, 4, 6, 16)


def reference_loss(t: dict, n, d, pw, pa, pkv, post):
    """Kumar et al. 2025, Eq. 3-5 and the unified δ_PTQ (Eq. 8-11), written out in numpy."""
    n_eff = n * (1 - np.exp(-pw / t["gamma_w"])) * (1 - np.exp(-pa / t["gamma_a"])) * (1 - np.exp(-pkv / t["gamma_kv"]))
    robust = np.where(post < pw, 1 - np.exp(-t["C_w"] * (pw - post)), 0.0)
    delta = t["C_T"] * np.exp(-post / t["gamma_post"]) * d ** t["gamma_D"] / n_eff ** t["gamma_N"] * robust
    return t["A"] * n_eff ** -t["alpha"] + t["B"] * d ** -t["beta"] + t["E"] + delta


def precision_study(truth: dict, *, noise: float = 0.002, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for n in (1e4, 4e4, 1.6e5, 6.4e5):
        for d in (1e6, 4e6, 1.6e7):
            for pw, pa, pkv in TRAIN_VARIANTS:
                for post in POST_BITS:
                    loss = reference_loss(truth, n, d, pw, pa, pkv, post)
                    rows.append(dict(n_params=n, n_tokens=d, train_bits_w=pw, train_bits_a=pa, train_bits_kv=pkv,
                                     bits=post, nll_toy=loss * math.exp(rng.normal(0, noise))))
    return pd.DataFrame(rows)


def recovers(fit, truth: dict, *, rtol: float = 0.15) -> bool:
    """The fit found the generating parameters: every exponent within rtol, and the fit is tight."""
    close = all(abs(fit.params[k] - truth[k]) <= rtol * abs(truth[k]) for k in EXPONENTS)
    return close and float(np.sqrt(np.mean(fit.residuals() ** 2))) < 0.004


def test_law_matches_the_written_out_equations_at_the_papers_constants():
    cols = ("n_params", "n_tokens", "train_bits_w", "train_bits_a", "train_bits_kv", "bits")
    rows = np.array([[3e7, 1.5e9, 16, 16, 16, 16], [2.2e8, 2.6e10, 4, 16, 3, 3], [2.2e8, 2.6e10, 4, 8, 16, 4],
                     [1e8, 6e9, 8, 16, 4, 4], [1e8, 6e9, 16, 3, 16, 6]])
    x = {c: torch.tensor(rows[:, i], dtype=torch.float64) for i, c in enumerate(cols)}
    p = {k: torch.tensor([[v]], dtype=torch.float64) for k, v in PAPER_CONSTANTS.items()}
    got = torch.exp(LAWS.get("precision").log_predict(p, x))[0].numpy()
    expect = reference_loss(PAPER_CONSTANTS, *rows.T)
    np.testing.assert_allclose(got, expect, rtol=1e-12)
    # PTQ to the training precision is free: the row equals the same model left unquantized
    assert got[2] == pytest.approx(reference_loss(PAPER_CONSTANTS, 2.2e8, 2.6e10, 4, 8, 16, 16), rel=1e-12)


@pytest.fixture(scope="module")
def fitted():
    """One fit of the law to data it generated, shared by the recovery and bootstrap tests."""
    return fit_law(precision_study(TRUTH), "precision", y="nll_toy", floor=None, n_starts=1)


@pytest.mark.slow
def test_precision_law_recovers_known_parameters(fitted):
    fit = fitted
    assert fit.converged, fit.status
    for name, true in TRUTH.items():
        tol = 0.3 if name in ("A", "B", "C_T") else 0.1
        assert fit.params[name] == pytest.approx(true, rel=tol), name
    assert recovers(fit, TRUTH)


@pytest.mark.slow
def test_recovery_check_fails_for_every_sign_flipped_exponent():
    """Mutation test: the law with the sign of one exponent flipped cannot reproduce the data, so
    the recovery check above would fail if the implementation had that sign wrong."""
    df = precision_study(TRUTH)
    law = LAWS.get("precision")
    assert recovers(fit_law(df, law, y="nll_toy", floor=None, n_starts=1, options={"maxiter": 1500}), TRUTH)
    for name in EXPONENTS:
        def flipped(p, x, name=name, base=law.log_predict):
            return base({**p, name: -p[name]}, x)

        mutant = dataclasses.replace(law, name=f"precision_flip_{name}", log_predict=flipped)
        try:
            fit = fit_law(df, mutant, y="nll_toy", floor=None, n_starts=1, options={"maxiter": 1500})
        except ValueError:
            continue  # a flipped saturation makes every start non-finite: the fit cannot even start
        assert not recovers(fit, TRUTH), name


@pytest.mark.slow
def test_precision_law_bootstrap_interval_covers_gamma_kv(fitted):
    boot = bootstrap_law(fitted, n_resamples=40, seed=1)
    lo, hi = boot.intervals(0.95)["gamma_kv"]
    assert lo < TRUTH["gamma_kv"] < hi and hi - lo < 1.0
    assert np.isfinite(boot.samples).all()


def test_compute_optimal_training_bits_matches_a_brute_force_search():
    """At a fixed N·D·P budget, minimising the law's pre-training loss over N and P by brute force
    finds the precision that maximises N_eff/(N·P), for two different budgets (budget-free)."""
    from kscale.fit.precision import compute_optimal_training_bits

    t = dict(TRUTH, gamma_w=2.7, gamma_a=2.2, gamma_kv=1.0)
    best = compute_optimal_training_bits(t)
    bits = np.linspace(1, 16, 1501)
    for budget in (1e13, 1e16):
        n = np.geomspace(1e2, 1e9, 1400)[:, None]
        d = budget / (n * bits[None, :])
        loss = reference_loss(t, n, d, bits[None, :], bits[None, :], bits[None, :], 16.0)  # no PTQ at 16
        _, j = np.unravel_index(np.argmin(loss), loss.shape)
        assert bits[j] == pytest.approx(best, abs=0.05), budget
    assert 3.0 < best < 5.0
    # bootstrap arrays give one optimum per resample
    arr = compute_optimal_training_bits({k: np.array([2.7, 5.4]) for k in ("gamma_w", "gamma_a", "gamma_kv")})
    assert arr.shape == (2,) and arr[1] == pytest.approx(2 * arr[0], abs=0.02)
