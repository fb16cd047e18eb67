"""The precision decision reads the paired noise (issues 17 §3, 19 §1-2): two cells of one checkpoint
differ with the SE of their paired difference, cells of different sizes with the absolute SEs, and a
cell stopped early by ``eval.target_se`` is fitted on its full-set paired estimate."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kscale.fit import bootstrap_law, fit_law
from kscale.fit.paired_noise import difference_noise, use_paired_estimates
from kscale.pareto import best_per_budget, compare_at_equal_size
from kscale.report.context import ReportOptions, StudyContext
from kscale.report.form import effect_noise, form_check, measured_spread
from kscale.report.inputs import metric_columns
from kscale.report.sections.crossovers import crossover_section
from kscale.report.sections.frontier import frontier_section

ABS_SE, PAIRED_SE = 0.012, 0.001  # the toy's absolute nll SE vs a paired dnll SE ~12x smaller
DIFF_SE = math.hypot(PAIRED_SE, PAIRED_SE)  # bound for two quantized cells of one checkpoint


def _cell(n, k, dnll, *, ref=2.0, family="toy"):
    bpp = 16.0 if k == 16 else k + 0.25
    return dict(family=family, size=f"{n:g}", checkpoint="c", revision=None, n_params=n, n_tokens=20 * n, method="rtn", dtype="int",
                bits=k, blocksize=64, total_bits=n * bpp, nll_toy=ref + dnll, nll_toy_se=ABS_SE,
                dnll_toy=dnll, dnll_toy_se=0.0 if k == 16 else PAIRED_SE, status="ok")


def _one_size(gap_in_se: float = 3.0) -> pd.DataFrame:
    """One checkpoint: 16-bit, 4-bit ahead of 3-bit by ``gap_in_se`` paired SEs of the difference."""
    return pd.DataFrame([_cell(1e5, 16, 0.0), _cell(1e5, 4, 0.02), _cell(1e5, 3, 0.02 + gap_in_se * DIFF_SE)])


def test_three_paired_se_at_one_size_is_resolved_where_absolute_se_would_not_be():
    df = _one_size(3.0)
    same = compare_at_equal_size(df, "nll_toy", 3, 4)
    assert len(same) == 1 and same["noise"].iloc[0] == "paired"
    assert math.isclose(same["se"].iloc[0], DIFF_SE, rel_tol=1e-12)
    assert math.isclose(same["difference"].iloc[0], 3.0 * DIFF_SE, rel_tol=1e-9)
    assert not bool(same["within_noise"].iloc[0])
    # the same rows without the paired column: two absolute SEs in quadrature, 3 paired SE is within
    unpaired = compare_at_equal_size(df.drop(columns="dnll_toy_se"), "nll_toy", 3, 4)
    assert unpaired["noise"].iloc[0] == "absolute" and math.isclose(unpaired["se"].iloc[0], math.hypot(ABS_SE, ABS_SE))
    assert bool(unpaired["within_noise"].iloc[0])
    # and 1 paired SE is within noise either way
    assert bool(compare_at_equal_size(_one_size(1.0), "nll_toy", 3, 4)["within_noise"].iloc[0])


def test_margin_against_own_16_bit_is_exactly_its_dnll_se_and_across_sizes_is_absolute():
    df = _one_size()
    ref, q4 = df.iloc[0], df.iloc[1]
    assert difference_noise(ref, q4, "nll_toy") == (PAIRED_SE, "paired")  # the 16-bit row's paired SE is 0
    q4_nan = q4.copy()
    q4_nan["revision"] = np.nan  # rows read from JSON mix None and NaN for a missing value
    ref_16 = ref.copy()
    ref_16["train_bits_w"] = 16.0  # a row written after the training-precision column existed
    assert difference_noise(ref_16, q4_nan, "nll_toy") == (PAIRED_SE, "paired")
    ref_16["train_bits_w"] = 4.0  # a ladder trained at 4 bits is another checkpoint
    assert difference_noise(ref_16, q4_nan, "nll_toy")[1] == "absolute"
    other = pd.Series(_cell(2e5, 4, 0.01))
    se, kind = difference_noise(q4, other, "nll_toy")
    assert kind == "absolute" and math.isclose(se, math.hypot(ABS_SE, ABS_SE))


def test_best_per_budget_margin_uses_the_paired_noise_within_one_checkpoint():
    df = _one_size(3.0)
    budget = float(df["total_bits"].max())
    row = best_per_budget(df[df["bits"] < 16], "nll_toy", [budget]).iloc[0]
    assert "4-bit" in row["best_config"] and "3-bit" in row["runner_up_config"]
    assert row["margin_noise"] == "paired" and math.isclose(row["margin"] / row["margin_se"], 3.0)
    # a runner-up of another size (the 3-bit cell left out): absolute SEs
    two = pd.concat([df, pd.DataFrame([_cell(3e4, 8, 0.001, ref=2.3)])], ignore_index=True)
    small = float(two.loc[two["n_params"] == 3e4, "total_bits"].iloc[0])
    r = best_per_budget(two[two["bits"].isin([4, 8])], "nll_toy", [float(df.loc[1, "total_bits"])]).iloc[0]
    assert "4-bit" in r["best_config"] and small < df.loc[1, "total_bits"]
    assert r["margin_noise"] == "absolute" and math.isclose(r["margin_se"], math.hypot(ABS_SE, ABS_SE))


def _family(df: pd.DataFrame, tmp_path):
    return StudyContext(tmp_path, df, ReportOptions(n_bootstrap=0), tmp_path).families[0]


def test_sections_say_which_noise_each_statement_uses(tmp_path):
    rows = pd.concat([_one_size(3.0), pd.DataFrame([_cell(3e5, k, d, ref=1.8) for k, d in
                                                    ((16, 0.0), (4, 0.01), (3, 0.03))])], ignore_index=True)
    ctx = _family(rows, tmp_path)
    text = "\n".join(crossover_section(ctx).markdown)
    assert "at equal size (2 size(s), noise: paired): 3-bit better at 0, 4-bit at 2; 2 of 2 resolved" in text
    assert "at equal total bits (different sizes): the absolute SEs" in text
    front = "\n".join(frontier_section(_family(rows[rows["bits"] < 16], tmp_path)).markdown)
    assert "*(paired)*" in front and "the paired SE of their difference (`dnll_toy_se`" in front


def test_effect_noise_is_the_median_paired_se_of_a_difference_at_the_largest_size():
    rows = pd.DataFrame([_cell(1e5, 16, 0.0), _cell(1e5, 4, 0.02), _cell(1e5, 3, 0.05)])
    rows.loc[2, "dnll_toy_se"] = 0.002
    fit = type("Fit", (), {"data": rows})()
    tol, words = effect_noise(fit, rows, "nll_toy")
    # pairs: 16 vs 4 -> 0.001, 16 vs 3 -> 0.002, 4 vs 3 -> hypot(0.001, 0.002); median 0.002
    assert math.isclose(tol, 2 * 0.002) and "paired SE" in words
    tol_abs, words_abs = effect_noise(fit, rows.drop(columns="dnll_toy_se"), "nll_toy")
    assert math.isclose(tol_abs, 2 * math.sqrt(2) * ABS_SE) and "absolute SE" in words_abs


def test_a_small_precision_effect_is_identified_against_paired_noise_not_against_absolute():
    """Noise-free rows with a precision effect of 0.1·2^-k nats: the fitted spread at the largest
    size (~0.004, bootstrap interval above 0.0036) clears 2 paired SE of a difference (0.0024) but not
    2 absolute SE of one (2·√2·0.012 = 0.034)."""
    rows = _law_rows(effect=0.1)
    fit = fit_law(rows, "offset", y="nll_toy", warn=False)
    boot = bootstrap_law(fit, n_resamples=100, seed=0)
    paired = form_check(fit, boot, rows, "nll_toy")
    absolute = form_check(fit, boot, rows.drop(columns="dnll_toy_se"), "nll_toy")
    assert paired.effect == absolute.effect and paired.effect[1] > 0.003
    assert paired.identified and math.isclose(paired.tolerance, 2 * float(np.median([PAIRED_SE] + [DIFF_SE] * 3 + [PAIRED_SE] * 2)))
    assert not absolute.identified and math.isclose(absolute.tolerance, 2 * math.sqrt(2) * ABS_SE)
    assert "2 absolute SE of a difference" in absolute.sentences[0]
    # next to it, the measured spread there (3-bit vs 16-bit: 0.1/8 nats) with the noise of that difference
    assert "Measured there, the cells span 0.0125 ± 0.01697 (absolute SE of that difference): within the noise" \
        in absolute.sentences[0]
    spread, se, kind = measured_spread(fit, rows, "nll_toy")
    assert math.isclose(spread, 0.1 / 8) and (se, kind) == (PAIRED_SE, "paired")  # exact: 16-bit's paired SE is 0


def _law_rows(stop_at: int | None = None, effect: float = 0.5) -> pd.DataFrame:
    """Rows of L = 1.5 + 40·N^(-0.3) + effect·2^(-k): the row at ``stop_at`` stopped after a 5 % subset
    whose own mean is 0.2 nats off; its paired full-set estimate is the true value."""
    rows = []
    for n in np.geomspace(1e4, 1e6, 5):
        for k in (3, 4, 8, 16):
            dnll = 0.0 if k == 16 else effect * 2.0 ** -k
            loss = 1.5 + 40.0 * n ** -0.3 + dnll
            rows.append(dict(_cell(n, k, dnll), nll_toy=loss, nll_toy_paired=loss, subset_toy=1.0,
                             ppl_toy=math.exp(loss), entropy_rate=1.4))
    df = pd.DataFrame(rows)
    if stop_at is not None:
        df.loc[stop_at, ["nll_toy", "subset_toy"]] = [df.loc[stop_at, "nll_toy"] + 0.2, 0.05]
        df.loc[stop_at, "ppl_toy"] = math.exp(df.loc[stop_at, "nll_toy"])
    return df


def test_a_stopped_cell_is_fitted_on_its_paired_estimate():
    full, stopped = _law_rows(), _law_rows(stop_at=9)
    fixed, notes = use_paired_estimates(stopped)
    assert notes and "1 cell(s) stopped early" in notes[0] and "`nll_toy_paired`" in notes[0]
    assert fixed.loc[9, "nll_toy"] == full.loc[9, "nll_toy"] and fixed.loc[9, "nll_toy_subset"] == stopped.loc[9, "nll_toy"]
    assert math.isclose(fixed.loc[9, "ppl_toy"], full.loc[9, "ppl_toy"])
    # its absolute SE: the 16-bit row's full-set SE and the paired SE in quadrature
    assert math.isclose(fixed.loc[9, "nll_toy_se"], math.hypot(ABS_SE, PAIRED_SE))
    unchanged = stopped.drop(index=9).assign(nll_toy_subset=stopped["nll_toy"].drop(index=9))
    assert fixed.drop(index=9).equals(unchanged)
    law = "offset"
    p_full = fit_law(full, law, y="nll_toy", warn=False).params
    p_fixed = fit_law(fixed, law, y="nll_toy", warn=False).params
    p_raw = fit_law(stopped, law, y="nll_toy", warn=False).params
    # the robust fit damps the 0.2-nat subset outlier, but every parameter still moves >= 20x more
    # than with the paired estimate (whose only change is the cell's SE, 0.012 -> 0.01204)
    for k in p_full:
        assert abs(p_fixed[k] - p_full[k]) * 20 < abs(p_raw[k] - p_full[k]), k


def test_kl_distribution_summaries_are_not_metric_columns():
    df = pd.DataFrame({"nll_toy": [2.0], "kl_toy": [0.01], "kl_toy_median": [0.005], "kl_toy_p90": [0.02],
                       "kl_toy_p99": [0.05], "kl_toy_max": [0.4], "kl_toy_tail": [1e-4], "kl_toy_se": [1e-3],
                       "nll_toy_paired": [2.0], "nll_toy_subset": [2.1]})
    assert metric_columns(df) == ["nll_toy", "kl_toy", "nll_toy_paired"]
