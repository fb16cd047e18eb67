"""Parameter recovery, the summed Huber objective, degenerate points and user laws."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from kscale.fit import LAWS, DegeneratePointsWarning, FitError, Law, fit_law
from kscale.fit.laws import register_law



def test_registry_names():
    assert {"power", "offset", "neff", "chinchilla"} <= set(LAWS.names())
    with pytest.raises(ValueError, match="Did you mean 'power'"):
        LAWS.get("powr")


def test_offset_recovers_known_parameters(offset_study, offset_truth):
    fit = fit_law(offset_study, "offset", y="nll_toy", n_starts=2)
    assert fit.converged and fit.n_points == len(offset_study)
    for name, true in offset_truth.items():
        tol = 0.1 * abs(true) if name == "A" else 0.03
        assert fit.params[name] == pytest.approx(true, abs=tol), name
    # prediction of a fresh row follows the formula with the fitted numbers
    row = offset_study.iloc[[7]]
    p = fit.params
    k = int(row["bits"].iloc[0])
    expect = p["E"] + p["A"] * row["total_bits"].iloc[0] ** -p["alpha"] * math.exp(p.get(f"c_{k}", 0.0))
    assert fit.predict(row)[0] == pytest.approx(expect, rel=1e-12)


def test_power_recovers_per_precision_curves(synth):
    truth = {}
    for k in (3, 4, 5, 6, 8, 16):
        truth |= {f"E_{k}": 1.2 + 0.02 * k, f"A_{k}": 50.0 + 5 * k, f"alpha_{k}": 0.25 + 0.005 * k}
    df = synth("power", truth=truth, noise=0.001)
    fit = fit_law(df, "power", y="nll_toy", n_starts=2)
    assert set(fit.params) == set(truth)
    for name, true in truth.items():
        if name.startswith("E"):
            assert fit.params[name] == pytest.approx(true, rel=0.05), name
        if name.startswith("alpha"):
            assert fit.params[name] == pytest.approx(true, abs=0.05), name


def test_neff_recovers_gamma(synth):
    truth = {"E": 1.4, "A": 60.0, "alpha": 0.28, "gamma": 1.5}
    df = synth("neff", truth=truth, noise=0.001)
    fit = fit_law(df, "neff", y="nll_toy", n_starts=3)
    assert fit.params["gamma"] == pytest.approx(1.5, rel=0.1)
    assert fit.params["E"] == pytest.approx(1.4, rel=0.03)
    assert fit.params["alpha"] == pytest.approx(0.28, abs=0.03)


def test_summed_not_averaged_huber(offset_study):
    """Besiroglu et al.: averaging the Huber losses makes L-BFGS stop before converging.

    Same start, same (scipy default) tolerances: the sum reaches the truth, the mean stalls.
    """
    scipy_defaults = {"ftol": 2.220446049250313e-09, "gtol": 1e-5}
    init = {"E": 1.0, "A": math.exp(5.0), "alpha": 0.5, "c": 0.0}
    s = fit_law(offset_study, "offset", y="nll_toy", init=init, options=scipy_defaults)
    m = fit_law(offset_study, "offset", y="nll_toy", init=init, reduction="mean", options=scipy_defaults)
    assert s.params["alpha"] == pytest.approx(0.3, abs=0.02)
    assert s.params["E"] == pytest.approx(1.5, abs=0.03)
    # the averaged objective stops far away, with a much worse summed Huber loss
    assert abs(m.params["alpha"] - 0.3) > 0.05 or abs(m.params["E"] - 1.5) > 0.1
    assert m.loss * m.n_points > 3 * s.loss


def test_too_few_points_is_a_clear_error(offset_study):
    tiny = offset_study[offset_study["bits"].isin([4, 16])].iloc[:3]
    with pytest.raises(FitError, match=r"parameters .* only 3 usable points"):
        fit_law(tiny, "offset", y="nll_toy")


def test_degenerate_points_masked_with_warning(offset_study):
    df = offset_study.copy()
    df.loc[0, "nll_toy"] = math.log(5000.0)  # a collapsed 3-bit model, ppl 5000
    df.loc[0, "ppl_toy"] = 5000.0
    df.loc[1, "status"] = "oom"
    df.loc[2, "nll_toy"] = float("nan")
    with pytest.warns(DegeneratePointsWarning, match="3 of 36 rows excluded"):
        fit = fit_law(df, "offset", y="nll_toy", n_starts=1)
    assert fit.n_points == 33
    assert fit.params["alpha"] == pytest.approx(0.3, abs=0.03)  # the collapse did not drag the fit


def test_clip_mode_caps_cross_entropy(offset_study):
    from kscale.fit import clean_points

    df = offset_study.copy()
    df.loc[0, ["nll_toy", "ppl_toy"]] = [math.log(5000.0), 5000.0]
    with pytest.warns(DegeneratePointsWarning):
        out, rep = clean_points(df, "nll_toy", degenerate="clip")
    assert len(out) == 36 and out.loc[0, "nll_toy"] == pytest.approx(math.log(100.0))
    with pytest.raises(ValueError, match="degenerate must be one of"):
        clean_points(df, "nll_toy", degenerate="drop")


def test_user_defined_law_registers_and_fits():
    def log_pred(p, x):
        return torch.log(p["E"] + p["A"] * x["n_params"] ** -p["alpha"])

    law = Law(name="test_n_only", formula="L = E + A N^-α", params=("E", "A", "alpha"), columns=("n_params",),
              log_predict=log_pred, positive=("E", "A"), grid={"E": (1.0,), "A": (10.0, 1000.0), "alpha": (0.2, 0.6)})
    register_law(law, overwrite=True)
    n = np.geomspace(1e5, 1e9, 12)
    df = pd.DataFrame({"n_params": n, "loss": 2.0 + 300.0 * n ** -0.35})
    fit = fit_law(df, "test_n_only", y="loss")
    assert fit.params["alpha"] == pytest.approx(0.35, rel=1e-3)
    assert fit.params["E"] == pytest.approx(2.0, rel=1e-3)


@pytest.mark.slow
def test_chinchilla_matches_besiroglu(data_dir):
    """Besiroglu et al. 2024 (arXiv 2404.10102, Eq. 4 / Table): on the 240 digitized runs left after
    dropping the 5 highest losses, E = 1.82, A = 482.01, B = 2085.43, α = 0.3478, β = 0.3658."""
    d = pd.read_csv(data_dir / "chinchilla" / "svg_extracted_data.csv")
    df = pd.DataFrame({"n_params": d["Model Size"], "n_tokens": d["Training FLOP"] / (6 * d["Model Size"]),
                       "loss": d["loss"]})
    df = df[df["loss"] < np.sort(df["loss"].to_numpy())[-5]]  # their nr_of_models_excluded = 5
    assert len(df) == 240
    fit = fit_law(df, "chinchilla", y="loss", n_starts=3)
    p = fit.params
    assert fit.converged
    assert p["E"] == pytest.approx(1.82, abs=0.02)
    assert p["alpha"] == pytest.approx(0.3478, abs=0.005)
    assert p["beta"] == pytest.approx(0.3658, abs=0.005)
    assert p["A"] == pytest.approx(482.01, rel=0.05)
    assert p["B"] == pytest.approx(2085.43, rel=0.05)
    # and nowhere near the original paper's (rounded) E = 1.69, β = 0.28
    assert abs(p["beta"] - 0.28) > 0.05


@pytest.mark.slow
def test_known_entropy_rate_bounds_the_irreducible_loss(offset_study):
    """A floor above the truth binds (E sits on it, resamples too); one below it changes nothing."""
    from kscale.fit import bootstrap_law

    free = fit_law(offset_study, "offset", y="nll_toy", n_starts=1)
    assert free.floors == {} and free.params["E"] == pytest.approx(1.5, abs=0.03)
    high = fit_law(offset_study.assign(entropy_rate=1.6), "offset", y="nll_toy", n_starts=1)
    assert high.floors == {"E": 1.6}
    assert high.params["E"] == pytest.approx(1.6, rel=1e-9) and high.at_floor() == ["E"]
    boot = bootstrap_law(high, n_resamples=50, seed=0)
    assert boot.frame()["E"].min() >= 1.6 * (1 - 1e-12)
    far = offset_study.iloc[:6].assign(total_bits=1e30)
    assert (boot.predict(far) >= 1.6 * (1 - 1e-12)).all()  # no curve extrapolates below the floor
    low = fit_law(offset_study.assign(entropy_rate=1.2), "offset", y="nll_toy", n_starts=1)
    assert low.params["E"] == pytest.approx(free.params["E"], rel=1e-4) and low.at_floor() == []
    # explicit floor=None ignores the column; perplexity gets exp(H); accuracy gets none
    assert fit_law(offset_study.assign(entropy_rate=1.6), "offset", y="nll_toy", floor=None).floors == {}
    ppl = fit_law(offset_study.assign(entropy_rate=1.6), "offset", y="ppl_toy", n_starts=1)
    assert ppl.floors == {"E": pytest.approx(math.exp(1.6))} and ppl.params["E"] >= math.exp(1.6) * (1 - 1e-12)


def test_floor_binds_every_per_precision_E(synth):
    truth = {}
    for k in (3, 4, 5, 6, 8, 16):
        truth |= {f"E_{k}": 1.2 + 0.02 * k, f"A_{k}": 50.0 + 5 * k, f"alpha_{k}": 0.25 + 0.005 * k}
    df = synth("power", truth=truth, noise=0.001).assign(entropy_rate=1.4)
    fit = fit_law(df, "power", y="nll_toy", n_starts=2)
    for k in (3, 4, 5, 6, 8, 16):
        assert fit.params[f"E_{k}"] >= 1.4 * (1 - 1e-12)
        if truth[f"E_{k}"] > 1.45:  # well above the floor: recovered as before
            assert fit.params[f"E_{k}"] == pytest.approx(truth[f"E_{k}"], rel=0.05)


@pytest.mark.slow
def test_committed_toy_study_fit_respects_entropy_rate():
    """Issue 11 §3: the offset fit put E at 0.48 against the known 0.948, interval down to 1e-304."""
    from pathlib import Path

    from kscale.fit import bootstrap_law
    from kscale.results import load_results

    study = Path(__file__).resolve().parents[2] / "results" / "toy-study"
    df = load_results(study)
    H = float(df["entropy_rate"].iloc[0])
    fit = fit_law(df, "offset", y="nll_toy", warn=False)
    lo, hi = bootstrap_law(fit, n_resamples=100, seed=0).intervals()["E"]
    assert fit.params["E"] >= H * (1 - 1e-12) and lo >= H * (1 - 1e-12)
    big = df.iloc[:3].assign(total_bits=1e15)
    assert (fit.predict(big) >= H * (1 - 1e-12)).all()
