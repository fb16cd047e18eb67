"""The report's checks, each against a number worked out by hand: precision-effect error, every
change of order with its noise, families fitted on their own metric, stale figures, one size."""
from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kscale.fit import ExtrapolationResult, extrapolate, fit_law, precision_effect_score
from kscale.pareto import compare_precisions
from kscale.report import write_report

_spec = importlib.util.spec_from_file_location("report_studies", Path(__file__).with_name("studies.py"))
studies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(studies)


def _with_prediction(ext, predicted) -> ExtrapolationResult:
    h = ext.heldout.copy()
    h["predicted"] = predicted
    return ExtrapolationResult(fit=ext.fit, heldout=h, holdout_sizes=ext.holdout_sizes)


def test_precision_effect_error_is_relative_to_the_measured_effect():
    df = studies.dettmers_study(noise=0.0, n_sizes=4)
    df = df[df["bits"] > 3]  # no collapse term: the offset law is then the generator's exact form
    ext = extrapolate(df, "offset", y="nll_toy", n_starts=2)
    obs = ext.heldout["nll_toy"].to_numpy()
    # a prediction with no precision effect is exactly as wrong as the effect is big: error 1
    flat = _with_prediction(ext, np.full(len(obs), obs.mean()))
    assert precision_effect_score(flat, df, "nll_toy").effect_error == pytest.approx(1.0)
    # a prediction off in level only has the effect exactly right: error 0
    shifted = _with_prediction(ext, obs + 0.3)
    assert precision_effect_score(shifted, df, "nll_toy").effect_error == pytest.approx(0.0, abs=1e-12)
    # half the effect: error 1/2; spreads as measured and as predicted
    ref = obs[ext.heldout["bits"].to_numpy() == 16].mean()
    half = precision_effect_score(_with_prediction(ext, ref + 0.5 * (obs - ref)), df, "nll_toy")
    assert half.effect_error == pytest.approx(0.5)
    assert half.spread_predicted == pytest.approx(0.5 * np.ptp(obs))
    # the exact law fitted without the largest size predicts effect and order at equal bits
    real = precision_effect_score(ext, df, "nll_toy")
    assert real.effect_error < 0.01 and real.rank_agreement == 1.0 and real.n_rank > 0


def _curves(low, high, se=None):
    t = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5])
    rows = [dict(n_params=x / 4, total_bits=x, bits=4, nll_x=v) for x, v in zip(t, low)]
    rows += [dict(n_params=x / 8, total_bits=x, bits=8, nll_x=v) for x, v in zip(t, high)]
    df = pd.DataFrame(rows).assign(status="ok")
    if se is not None:
        df["nll_x_se"] = se
    return df, np.log(t)


def test_every_change_of_order_is_reported_with_its_budget():
    low = [2.0, 1.8, 1.7, 1.5, 1.4]
    high = [2.1, 1.7, 1.8, 1.45, 1.5]  # 4-bit ahead, behind, ahead, behind, ahead
    df, x = _curves(low, high)
    c = compare_precisions(df, "nll_x", 4, 8)
    d = np.array(low) - np.array(high)
    assert len(c.points) == 5 and np.allclose(c.points["difference"], d)
    # crossing between grid points i, i+1 where d changes sign, linear in log total bits
    expect = [math.exp(x[i] + (x[i + 1] - x[i]) * d[i] / (d[i] - d[i + 1])) for i in range(4)]
    assert [round(b) for b, _, _ in c.changes] == [round(e) for e in expect]
    assert [ahead for _, ahead, _ in c.changes] == [8, 4, 8, 4]
    assert all(w is None for _, _, w in c.changes)  # no SE in the rows: noise unknown, not "significant"
    # with SEs: margins of 0.05 against SE 0.03 per point (0.042 combined) are within 2 SE
    noisy = compare_precisions(_curves(low, high, se=0.03)[0], "nll_x", 4, 8)
    assert noisy.points["within_noise"].tolist() == [False, False, False, True, False]
    assert noisy.points["se"].iloc[0] == pytest.approx(math.hypot(0.03, 0.03))


def _family(df, family, metric):
    out = df.rename(columns={"nll_toy": metric, "nll_toy_se": f"{metric}_se", "ppl_toy": f"ppl_{metric[4:]}"})
    return out.assign(family=family, key=out["key"] + family)


@pytest.mark.slow
def test_families_fit_on_their_own_metric_and_stale_figures_go(tmp_path):
    base = studies.dettmers_study(n_sizes=3)
    df = pd.concat([_family(base, "toy", "nll_toy"), _family(base, "gpt2", "nll_wikitext2")], ignore_index=True)
    fig_dir = tmp_path / "s" / "figures"
    fig_dir.mkdir(parents=True)
    for name in ("toy-fit-power.png", "toy-residuals-power.pdf", "my-notes.png"):
        (fig_dir / name).write_bytes(b"x")
    rep = write_report(tmp_path / "s", df=df, law="offset", n_bootstrap=0, n_holdout=0)
    assert rep.metrics == {"gpt2": "nll_wikitext2", "toy": "nll_toy"}
    assert not any("non-finite" in p for p in rep.problems)  # no family's rows dropped for the other's metric
    text = rep.summary_path.read_text()
    assert "`nll_wikitext2` for gpt2" in text and "`nll_toy` for toy" in text
    on_disk = {p.name for p in fig_dir.iterdir() if not p.name.startswith(".")}
    # figures the summary does not describe (an earlier law's) are gone; a file the report never wrote stays
    assert on_disk == {p.name for p in rep.figure_paths} | {"my-notes.png"}
    assert {"gpt2-bits-scaling.png", "toy-fit-offset.png"} <= on_disk
    # a later report of one family removes the other family's figures via the manifest
    rep2 = write_report(tmp_path / "s", df=df[df.family == "toy"], law="offset", n_bootstrap=0, n_holdout=0)
    on_disk = {p.name for p in fig_dir.iterdir() if not p.name.startswith(".")}
    assert on_disk == {p.name for p in rep2.figure_paths} | {"my-notes.png"}


def test_one_size_says_nothing_to_fit_in_one_line(tmp_path):
    df = studies.dettmers_study(n_sizes=3)
    one = df[df["n_params"] == df["n_params"].max()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning escapes
        rep = write_report(tmp_path / "one", df=one, n_bootstrap=0)
    assert "one model size" in rep.answer and "nothing to fit" in rep.summary_path.read_text()
    assert not rep.problems and "rows excluded" not in rep.summary_path.read_text()


@pytest.mark.slow
def test_degenerate_exclusion_is_said_once(tmp_path, caplog):
    df = studies.dettmers_study(n_sizes=4)
    df.loc[df.index[0], ["nll_toy", "ppl_toy"]] = [9.0, 8103.0]  # one collapsed row
    with caplog.at_level(logging.INFO):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_report(tmp_path / "d", df=df, law="offset", n_bootstrap=0, n_holdout=1)
    said = [r for r in caplog.records if "rows excluded" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert not [w for w in caught if "rows excluded" in str(w.message)]


def test_measured_figures_draw_the_rows_standard_errors():
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from kscale import plots

    df = studies.dettmers_study(n_sizes=3)
    df["nll_toy_se"] = 0.01 * (1 + np.arange(len(df)) % 3)
    fig = plots.plot_bits_scaling(df, "nll_toy")
    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == df["bits"].nunique()  # one set per precision curve
    segs = [s for c in bars for s in c.lines[2][0].get_segments()]
    lengths = sorted(round(float(s[1][1] - s[0][1]), 6) for s in segs)
    assert lengths == sorted(round(2 * v, 6) for v in df["nll_toy_se"])  # ± SE around every measured point
    plt.close(fig)
    no_se = plots.plot_bits_scaling(df.drop(columns="nll_toy_se"), "nll_toy")
    assert not [c for c in no_se.axes[0].containers if isinstance(c, ErrorbarContainer)]
    plt.close(no_se)
