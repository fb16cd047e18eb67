"""Degradation as a quantity (issue 11 §2): add_delta, the qid/ptq laws, tokens thresholds."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from kscale.fit import bootstrap_law, extrapolate, fit_law, threshold_tokens, token_elasticity
from kscale.results import MissingBaselineWarning, add_delta, load_results


def _tiny_table():
    # two sizes x two revisions; s/rev-b has no baseline
    rows = []
    for size, n in (("s", 10), ("m", 20)):
        for rev, d, base in (("rev-a", 100, 3.0), ("rev-b", 400, 2.5)):
            if not (size == "s" and rev == "rev-b"):
                rows.append(dict(family="toy", size=size, n_params=n, revision=rev, n_tokens=d, method="none", bits=16,
                                 eval_name="toy", nll_x=base + n / 100, status="ok"))
            for k, extra in ((3, 0.30), (4, 0.10)):
                rows.append(dict(family="toy", size=size, n_params=n, revision=rev, n_tokens=d, method="rtn", bits=k,
                                 eval_name="toy", nll_x=base + n / 100 + extra * (d / 100), status="ok"))
    return pd.DataFrame(rows)


def test_add_delta_is_cell_minus_same_checkpoint_baseline():
    df = _tiny_table()
    with pytest.warns(MissingBaselineWarning, match=r"2 of 11 rows have no 16-bit baseline.*toy/s/rev-b"):
        out = add_delta(df, "nll_x")
    got = out.set_index(["size", "revision", "bits"])["delta_nll_x"]
    assert got[("m", "rev-a", 3)] == pytest.approx(0.30)
    assert got[("m", "rev-b", 3)] == pytest.approx(1.20)  # the rev-b baseline, not rev-a's
    assert got[("m", "rev-b", 4)] == pytest.approx(0.40)
    assert got[("s", "rev-a", 4)] == pytest.approx(0.10)
    assert got[("m", "rev-a", 16)] == 0.0
    assert np.isnan(got[("s", "rev-b", 3)]) and np.isnan(got[("s", "rev-b", 4)])  # NaN, not 0
    assert "delta_nll_x" not in df.columns  # a copy


def test_add_delta_without_revision_column_and_with_unknown_tokens():
    df = _tiny_table()
    one = df[df["revision"] == "rev-a"].drop(columns=["revision"]).assign(n_tokens=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every cell has its baseline: no warning at all
        out = add_delta(one, "nll_x")
    assert out.loc[(out["size"] == "m") & (out["bits"] == 3), "delta_nll_x"].item() == pytest.approx(0.30)
    # different evals never share a baseline
    other_eval = one.assign(eval_name="other").query("bits != 16")
    with pytest.warns(MissingBaselineWarning):
        both = add_delta(pd.concat([one, other_eval], ignore_index=True), "nll_x")
    assert both.loc[both["eval_name"] == "other", "delta_nll_x"].isna().all()
    with pytest.raises(ValueError, match="not in the results table"):
        add_delta(one, "nll_missing")


def test_load_results_delta_option(tmp_path):
    df = _tiny_table()
    df = df[df["revision"] == "rev-a"].reset_index(drop=True)
    df["key"] = [f"k{i}" for i in range(len(df))]
    (tmp_path / "rows").mkdir()
    with open(tmp_path / "rows" / "a.jsonl", "w") as f:
        for rec in df.to_dict(orient="records"):
            f.write(json.dumps(rec) + "\n")
    out = load_results(tmp_path, delta="nll_x")
    assert out.loc[(out["size"] == "s") & (out["bits"] == 3), "delta_nll_x"].item() == pytest.approx(0.30)


def _delta_rows(tokens_study, law, **kw):
    df = add_delta(tokens_study(law, **kw), "nll_toy")
    return df


@pytest.mark.parametrize("law", ["qid", "ptq"])
def test_degradation_laws_recover_parameters(tokens_study, qid_reference, law):
    fn, truth = qid_reference[law]
    df = _delta_rows(tokens_study, law)
    # add_delta recovers the generated (noisy) degradation, which scatters about the formula by ~1 %
    q = df[df["bits"] != 16]
    ratio = q["delta_nll_toy"] / fn(q["n_params"], q["n_tokens"], q["bits"].astype(float), truth)
    assert np.abs(np.log(ratio)).max() < 0.05
    fit = fit_law(df, law, y="delta_nll_toy", warn=False)
    assert fit.converged
    assert fit.n_points == len(q)  # the 16-bit rows (Δ = 0) were left out
    for name, true in truth.items():
        rel = 0.05 if name in ("k", "C_T") else 0.03
        assert fit.params[name] == pytest.approx(true, rel=rel), name
    # the law's prediction is the independent formula at the fitted parameters
    row = q.iloc[[5]]
    expect = fn(row["n_params"].item(), row["n_tokens"].item(), float(row["bits"].item()), fit.params)
    assert fit.predict(row)[0] == pytest.approx(expect, rel=1e-10)


@pytest.mark.parametrize("beta", [0.5, -0.4])
def test_token_exponent_sign_is_what_the_data_say(tokens_study, qid_reference, beta):
    """A law with D's exponent flipped would recover -β here and get the verdict backwards."""
    truth = dict(qid_reference["qid"][1], beta=beta)
    df = _delta_rows(tokens_study, "qid", truth=truth, noise=0.02)
    fit = fit_law(df, "qid", y="delta_nll_toy", warn=False)
    assert fit.params["beta"] == pytest.approx(beta, abs=0.03)
    boot = bootstrap_law(fit, n_resamples=200, seed=1)
    el = token_elasticity(fit, boot)
    assert el.value == pytest.approx(fit.params["beta"], rel=1e-6)  # d log ΔL / d log D = β exactly
    assert el.lo < beta < el.hi
    assert el.verdict == ("grows" if beta > 0 else "shrinks")
    # ptq's token exponent is γ_D, read the same way
    pfit = fit_law(df, "ptq", y="delta_nll_toy", warn=False)
    assert token_elasticity(pfit).value == pytest.approx(pfit.params["gamma_D"], rel=1e-6)
    assert np.sign(pfit.params["gamma_D"]) == np.sign(beta)


def test_threshold_tokens_closed_form_and_interval(tokens_study, qid_reference):
    fn, truth = qid_reference["qid"]
    df = _delta_rows(tokens_study, "qid")
    fit = fit_law(df, "qid", y="delta_nll_toy", warn=False)
    boot = bootstrap_law(fit, n_resamples=300, seed=0)
    sizes, bits = [2e3, 1.28e5, 1e7], [2, 3]
    tab = threshold_tokens(fit, boot, n_params=sizes, bits=bits, threshold=0.05)
    assert len(tab) == 6
    p = fit.params
    for _, r in tab.iterrows():
        closed = (0.05 * r["n_params"] ** p["alpha"] * r["bits"] ** p["gamma"] / p["k"]) ** (1 / p["beta"])
        assert r["n_tokens"] == pytest.approx(closed, rel=1e-6)
        true = (0.05 * r["n_params"] ** truth["alpha"] * r["bits"] ** truth["gamma"] / truth["k"]) ** (1 / truth["beta"])
        assert r["lo"] <= true <= r["hi"], (r.to_dict(), true)
        # at D* the fitted law predicts exactly the threshold
        at = pd.DataFrame({"n_params": [r["n_params"]], "n_tokens": [r["n_tokens"]], "bits": [r["bits"]]})
        assert fit.predict(at)[0] == pytest.approx(0.05, rel=1e-6)
    # more parameters or more bits: later to degrade
    assert tab.groupby("bits")["n_tokens"].apply(lambda s: s.is_monotonic_increasing).all()
    with pytest.raises(ValueError, match="threshold must be > 0"):
        threshold_tokens(fit, n_params=sizes, bits=bits, threshold=0.0)


def test_degradation_shrinking_with_tokens_never_reaches_threshold(tokens_study, qid_reference):
    truth = dict(qid_reference["qid"][1], beta=-0.4, k=1e-3)
    df = _delta_rows(tokens_study, "qid", truth=truth)
    fit = fit_law(df, "qid", y="delta_nll_toy", warn=False)
    tab = threshold_tokens(fit, n_params=[1e5], bits=[8], threshold=0.05)
    assert math.isinf(tab["n_tokens"].item())


def test_degradation_law_extrapolates_to_a_larger_size(tokens_study):
    df = _delta_rows(tokens_study, "qid")
    ext = extrapolate(df, "qid", y="delta_nll_toy", n_starts=2)
    assert ext.holdout_sizes == (1.28e5,)
    assert ext.mean_abs_rel_error < 0.03
    h = ext.heldout
    assert ext.mean_abs_log_error == pytest.approx(np.mean(np.abs(np.log(h["predicted"] / h["delta_nll_toy"]))))
    assert ext.mean_abs_log_error < 0.03


def test_delta_cleaning_masks_collapse_by_quantization_only():
    """ppl > 100 after quantization of a healthy checkpoint is a collapse; a checkpoint already
    near-random at 16 bit (ppl 110) keeps its small degradation."""
    from kscale.fit import clean_points

    base_nll = [math.log(20.0), math.log(110.0)]
    rows = []
    for i, b in enumerate(base_nll):
        rows.append(dict(size=f"s{i}", method="none", bits=16, nll_x=b))
        rows.append(dict(size=f"s{i}", method="rtn", bits=2, nll_x=math.log(500.0)))  # s0: collapse
        rows.append(dict(size=f"s{i}", method="rtn", bits=4, nll_x=b + 0.01))
    df = add_delta(pd.DataFrame(rows).assign(status="ok"), "nll_x")
    with pytest.warns(Warning, match="1 models collapsed by quantization"):
        out, rep = clean_points(df, "delta_nll_x")
    assert sorted(zip(out["size"], out["bits"])) == [("s0", 4), ("s1", 2), ("s1", 4)]


def test_degradation_laws_fit_the_paired_dnll_column(tokens_study):
    """Issue 19 §3: a dnll_<data> column (the evaluation's paired ln(PPL_q/PPL_16)) is fitted directly."""
    df = tokens_study("qid", noise=0.0)
    df["dnll_toy"] = add_delta(df, "nll_toy")["delta_nll_toy"]
    fit = fit_law(df, "qid", y="dnll_toy", n_starts=2)
    assert fit.n_points == int((df["bits"] < 16).sum())  # 16-bit rows (dnll = 0) left out
    assert fit.params["beta"] == pytest.approx(0.5, abs=1e-3) and fit.params["gamma"] == pytest.approx(5.0, abs=1e-2)


@pytest.mark.slow
def test_report_accepts_dnll_as_the_metric(tmp_path, tokens_study):
    from kscale.report import write_report

    df = tokens_study("qid", noise=0.02)
    df["dnll_toy"] = add_delta(df, "nll_toy")["delta_nll_toy"]
    rep = write_report(tmp_path / "d", df=df, metric="dnll_toy", n_bootstrap=50)
    text = rep.summary_path.read_text()
    assert "paired difference" in text and "### Degradation vs training tokens" in text
    assert "degradation grows with training tokens" in rep.answer
