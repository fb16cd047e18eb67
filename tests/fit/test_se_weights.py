"""Fits weight points by their standard errors when the rows carry ``<metric>_se`` (issue 19 §2)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kscale.fit import bootstrap_law, clean_points, fit_law


def test_points_with_large_se_count_less(offset_study, offset_truth):
    df = offset_study.copy()
    bad = df.index[(df["bits"] == 4) & (df["n_params"] > 5e6)]
    df.loc[bad, "nll_toy"] *= 1.05  # four of the six 4-bit points 5% off (a robust fit follows the majority) ...
    df["nll_toy_se"] = 0.003 * df["nll_toy"]
    df.loc[bad, "nll_toy_se"] = 0.3 * df.loc[bad, "nll_toy"]  # ... that the evaluation says are 100x noisier
    weighted = fit_law(df, "offset", y="nll_toy", n_starts=2)
    plain = fit_law(df, "offset", y="nll_toy", n_starts=2, weigh_by_se=False)
    assert weighted.se_column == "nll_toy_se" and plain.se_column is None
    err_w = abs(weighted.params["c_4"] - offset_truth["c_4"])
    err_p = abs(plain.params["c_4"] - offset_truth["c_4"])
    assert err_w < 0.05 and err_p > 3 * err_w
    # the bootstrap refits the same weighted objective: its centre stays at the weighted fit
    boot = bootstrap_law(weighted, n_resamples=40)
    assert np.median(boot.frame()["c_4"]) == pytest.approx(weighted.params["c_4"], abs=0.03)


def test_equal_se_is_the_unweighted_fit(offset_study):
    df = offset_study.assign(nll_toy_se=0.003 * offset_study["nll_toy"])  # equal relative noise: all weights 1
    a = fit_law(df, "offset", y="nll_toy", n_starts=2)
    b = fit_law(df, "offset", y="nll_toy", n_starts=2, weigh_by_se=False)
    assert a.params == pytest.approx(b.params, rel=1e-4)


def test_paired_metrics_drop_baselines_and_flat_cells():
    df = pd.DataFrame({"bits": [16, 4, 4, 3], "n_params": [1e6] * 4, "nll_x": [2.0, 2.1, 2.0, 2.5],
                       "dnll_x": [0.0, 0.1, -1e-4, 0.5], "kl_x": [0.0, 0.08, 1e-5, 0.4], "status": "ok"})
    out, rep = clean_points(df, "dnll_x", warn=False)
    assert out["dnll_x"].tolist() == [0.1, 0.5] and rep.n_dropped == 2
    out, _ = clean_points(df, "kl_x", warn=False)
    assert out["kl_x"].tolist() == [0.08, 1e-5, 0.4]
