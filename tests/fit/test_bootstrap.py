"""Bootstrap intervals cover the truth; decisions; extrapolation."""
from __future__ import annotations

import numpy as np
import pytest

from kscale.fit import bootstrap_law, extrapolate, fit_law
from kscale.fit.core import minimize_batch
from kscale.fit.bootstrap import _resample_weights


def test_intervals_cover_truth_in_most_trials(synth, offset_truth):
    hits, total = 0, 0
    for trial in range(4):
        df = synth("offset", noise=0.01, seed=100 + trial)
        fit = fit_law(df, "offset", y="nll_toy", n_starts=1, warn=False)
        ci = bootstrap_law(fit, n_resamples=300, seed=trial).intervals(0.95)
        for name in ("E", "alpha", "c_4", "c_8"):
            lo, hi = ci[name]
            hits += lo <= offset_truth[name] <= hi
            total += 1
    assert hits / total >= 0.75, (hits, total)


def test_batched_refit_equals_independent_lbfgsb(offset_study):
    fit = fit_law(offset_study, "offset", y="nll_toy", n_starts=1)
    boot = bootstrap_law(fit, n_resamples=5, seed=3)
    w = _resample_weights(fit, 5, np.random.default_rng(3))
    for i in range(5):
        th, *_ = minimize_batch(fit.problem(), fit.theta[None, :], weights=w[i : i + 1])
        np.testing.assert_allclose(boot.thetas[i], th[0], atol=2e-4)


def test_seeded_and_decisions(offset_study):
    fit = fit_law(offset_study, "offset", y="nll_toy", n_starts=1)
    b1 = bootstrap_law(fit, n_resamples=1000, seed=7)
    b2 = bootstrap_law(fit, n_resamples=1000, seed=7)
    np.testing.assert_array_equal(b1.samples, b2.samples)
    dec = b1.decisions([1e8, 1e9])
    # the synthetic truth has the lowest offset at 4 bits: 4-bit is optimal at every budget
    assert list(dec["best_bits"]) == [4.0, 4.0]
    assert (dec["p_best"] > 0.9).all()
    p_cols = [c for c in dec.columns if c.startswith("p_bits_")]
    np.testing.assert_allclose(dec[p_cols].sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="level"):
        b1.intervals(1.5)


def test_extrapolation_small_error(offset_study):
    ext = extrapolate(offset_study, "offset", y="nll_toy", n_holdout=1, n_starts=1)
    assert ext.holdout_sizes == (1e8,)
    assert len(ext.heldout) == 6
    assert ext.mean_abs_rel_error < 0.01
    with pytest.raises(ValueError, match="distinct sizes"):
        extrapolate(offset_study[offset_study["n_params"] == 1e8], "offset", y="nll_toy")
