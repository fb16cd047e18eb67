"""Frontier on a hand-made table with ties and dominated points, against brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from kscale.pareto import best_per_budget, crossover, pareto_frontier


def _table():
    # name, total_bits, nll
    rows = [("a", 1.0, 3.0), ("b", 2, 2.5), ("c", 2, 2.7),  # c: same cost as b, worse -> dominated
            ("d", 3, 2.5),                                # same metric as b, more bits -> dominated
            ("e", 4, 2.0), ("f", 4, 2.0),                 # exact tie: both stay
            ("g", 5, 2.2), ("h", 6, 1.5), ("i", 7, float("nan"))]
    df = pd.DataFrame(rows, columns=["name", "total_bits", "nll_x"])
    df["status"] = "ok"
    df.loc[len(df)] = ["j", 0.5, 1.0, "oom"]  # failed row never counts
    return df


def _brute(df, metric):
    ok = df[(df.status == "ok") & np.isfinite(df[metric])]
    keep = []
    for i, p in ok.iterrows():
        dominated = any((q.total_bits <= p.total_bits and q[metric] <= p[metric]) and
                        (q.total_bits < p.total_bits or q[metric] < p[metric]) for _, q in ok.iterrows())
        if not dominated:
            keep.append(p["name"])
    return sorted(keep)


def test_frontier_ties_and_dominated():
    df = _table()
    fr = pareto_frontier(df, "nll_x")
    assert sorted(fr["name"]) == ["a", "b", "e", "f", "h"] == _brute(df, "nll_x")


def test_frontier_random_tables_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 15
        df = pd.DataFrame({"name": [str(i) for i in range(n)], "total_bits": rng.integers(1, 6, n).astype(float),
                           "nll_x": rng.integers(1, 6, n).astype(float), "status": "ok"})
        assert sorted(pareto_frontier(df, "nll_x")["name"]) == _brute(df, "nll_x")


def test_accuracy_direction_and_groups():
    df = _table()
    df["acc_x"] = -df["nll_x"]
    df["family"] = ["p", "q"] * 5
    assert sorted(pareto_frontier(df, "acc_x")["name"]) == _brute(df, "nll_x")
    per = pareto_frontier(df, "nll_x", by="family")
    for fam, g in df.groupby("family"):
        assert sorted(per[per.family == fam]["name"]) == _brute(g, "nll_x")


def test_best_per_budget_runner_up_and_margin():
    df = pd.DataFrame({
        "size": ["s", "m", "s", "m", "l"], "n_params": [1, 2, 1, 2, 4], "bits": [4, 4, 8, 8, 4],
        "dtype": "int", "blocksize": 64, "total_bits": [4.25, 8.5, 8.25, 16.5, 17.0],
        "nll_x": [3.0, 2.6, 2.9, 2.55, 2.3], "status": "ok"})
    out = best_per_budget(df, "nll_x", budgets=[5, 9, 16.5, 100])
    assert list(out["best_value"]) == [3.0, 2.6, 2.55, 2.3]
    assert pd.isna(out.loc[0, "runner_up_config"]) and np.isnan(out.loc[0, "margin"])
    # at 9 bits: 4-bit m (2.6) beats the best 8-bit row under budget (2.9)
    assert out.loc[1, "best_config"].startswith("int 4-bit") and out.loc[1, "margin"] == pytest.approx(0.3)
    assert out.loc[3, "runner_up_value"] == 2.55 and out.loc[3, "margin"] == pytest.approx(0.25)


def test_crossover_interpolated_in_log_bits():
    # 4-bit worse at small scale, better at large; lines cross at log T midway between 1e2 and 1e4
    df = pd.DataFrame({"bits": [4, 4, 8, 8], "n_params": [1, 2, 1, 2], "total_bits": [1e2, 1e4, 1e2, 1e4],
                       "nll_x": [3.0, 2.0, 2.8, 2.2], "status": "ok"})
    c = crossover(df, "nll_x", 4, 8)
    assert c.status == "crosses" and c.total_bits == pytest.approx(1e3)
    assert crossover(df.assign(nll_x=[2.0, 1.0, 3.0, 2.0]), "nll_x", 4, 8).status == "always"
    assert crossover(df.assign(nll_x=[3.0, 3.0, 2.0, 2.0]), "nll_x", 4, 8).status == "never"


def test_frontier_segments_one_row_per_change_of_winner():
    from kscale.pareto import frontier_segments

    # costs 1..6; winner: a (1-2), then b (3-5: c joins at 4 and d at 5, closing in), then e (6)
    df = pd.DataFrame({
        "size": ["s", "s", "m", "m", "m", "l"], "n_params": [1, 1, 2, 2, 2, 4], "bits": [3, 4, 3, 4, 8, 3],
        "dtype": "int", "blocksize": 64, "total_bits": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "nll_x": [3.0, 3.1, 2.5, 2.7, 2.55, 2.0], "status": "ok"})
    seg = frontier_segments(df, "nll_x")
    assert list(seg["budget_from"]) == [1.0, 3.0, 6.0] and list(seg["budget_to"]) == [2.0, 5.0, 6.0]
    assert list(seg["n_budgets"]) == [2, 3, 1]
    assert list(seg["best_value"]) == [3.0, 2.5, 2.0]
    assert seg.loc[0, "best_config"].startswith("int 3-bit") and seg.loc[0, "runner_up_value"] == 3.1
    # the margin is the smallest over the stretch: at budget 5 the 8-bit m (2.55) is 0.05 behind
    assert seg.loc[1, "margin"] == pytest.approx(0.05) and seg.loc[1, "runner_up_value"] == 2.55
    per = best_per_budget(df, "nll_x")
    for _, s in seg.iterrows():  # every budget in a segment has that winner
        inside = per[(per["budget"] >= s["budget_from"]) & (per["budget"] <= s["budget_to"])]
        assert (inside["best_value"] == s["best_value"]).all() and len(inside) == s["n_budgets"]
        assert inside["margin"].min() == pytest.approx(s["margin"])
