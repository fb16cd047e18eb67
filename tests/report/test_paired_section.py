"""The paired-statistics section (issue 19 §3) on synthetic rows carrying kl_, dnll_ and flips_."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kscale.report import ReportOptions, StudyContext
from kscale.report.sections.paired import RANKS_FLIPS, paired_section


def _rows(n_low: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for size, n in (("s", 1e5), ("m", 4e5), ("l", 1.6e6), ("xl", 6.4e6)):
        rows.append(dict(family="toy", size=size, n_params=n, bits=16, dtype=None, method="none", status="ok",
                         nll_toy=2.0, kl_toy=0.0, dnll_toy=0.0, flips_piqa=0.0, total_bits=16 * n))
        for k in (3, 4, 5, 6, 8):
            for dt in ("int", "nf"):
                kl = 2.0 ** (-2 * k) * (1.5 if dt == "int" else 1.0) * (1e6 / n) ** 0.2
                dnll = 0.9 * kl * np.exp(rng.normal(0, 0.01))
                rows.append(dict(family="toy", size=size, n_params=n, bits=k, dtype=dt, method="rtn", status="ok",
                                 nll_toy=2.0 + dnll, kl_toy=kl, kl_toy_se=0.05 * kl, dnll_toy=dnll,
                                 dnll_toy_se=0.05 * kl, total_bits=(k + 0.25) * n))
    df = pd.DataFrame(rows)
    q = df["bits"] < 16
    order = df[q]["kl_toy"].sort_values(kind="stable").index
    flips = pd.Series(np.arange(len(order), dtype=float) * 0.01 + 0.1, index=order)  # grows with KL ...
    flips[order[:n_low]] = np.linspace(0.05, 0.01, n_low)  # ... except among the smallest KL: reversed
    df.loc[order, "flips_piqa"] = flips
    df["flips_piqa_se"] = 0.003
    return df


def _section(df, tmp_path):
    study = StudyContext(tmp_path, df, ReportOptions(n_bootstrap=0), tmp_path / "out")
    return paired_section(study.families[0])


def test_rank_correlations_and_low_kl_cells(tmp_path):
    df = _rows()
    out = _section(df, tmp_path)
    text = "\n".join(out.markdown)
    cells = df[df["bits"] < 16]
    rho_dnll = cells["kl_toy"].corr(cells["dnll_toy"], method="spearman")  # pandas' own rank correlation
    rho_flips = cells["kl_toy"].corr(cells["flips_piqa"], method="spearman")
    assert f"| toy | dnll_toy | {rho_dnll:.4g} |" in text and rho_dnll > 0.99
    assert f"| toy | flips_piqa | {rho_flips:.4g} |" in text
    # the flagged cells: the largest set of lowest-KL cells (>= 5) in which KL does not rank the flips
    by_kl = cells.sort_values("kl_toy", kind="stable")
    n_low = max(n for n in range(5, len(by_kl) + 1)
                if not by_kl["kl_toy"].iloc[:n].corr(by_kl["flips_piqa"].iloc[:n], method="spearman") >= RANKS_FLIPS)
    assert n_low >= 8  # the 8 reversed cells at least
    kappa = by_kl["kl_toy"].iloc[n_low - 1]
    assert f"for the {n_low} cells with KL ≤ {kappa:.4g}" in text
    assert [p.name for p in out.figures] == ["toy-paired.png", "toy-paired.pdf"]


def test_without_flips_says_what_it_cannot_say(tmp_path):
    df = _rows().drop(columns=["flips_piqa", "flips_piqa_se", "dnll_toy", "dnll_toy_se"])
    out = _section(df, tmp_path)
    text = "\n".join(out.markdown)
    assert "No `flips_<task>` columns" in text
    cells = df[df["bits"] < 16]
    # without dnll columns, ln(PPL_q/PPL_16) comes from the nll rows: here exactly the dnll that built them
    rho = cells["kl_toy"].corr(cells["nll_toy"] - 2.0, method="spearman")
    assert f"| toy | dnll_toy | {rho:.4g} |" in text


def test_no_kl_no_section(tmp_path):
    out = _section(_rows().drop(columns=["kl_toy", "kl_toy_se"]), tmp_path)
    assert out.markdown == [] and out.figures == []
