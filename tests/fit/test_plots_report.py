"""Plots render headless and the report runs (also on tiny and degenerate studies)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import matplotlib
import pandas as pd
import pytest

from kscale import plots
from kscale.fit import bootstrap_law, extrapolate, fit_law
from kscale.report import write_report


def test_plots_render_and_save(tmp_path, offset_study):
    assert matplotlib.get_backend().lower() == "agg"
    df = offset_study.copy()
    extra = df[df.bits == 4].assign(blocksize=128, bits_per_param=4.125, dtype="nf")
    extra["total_bits"] = extra["n_params"] * 4.125
    df = pd.concat([df, extra], ignore_index=True)
    fit = fit_law(offset_study, "offset", y="nll_toy", n_starts=1)
    boot = bootstrap_law(fit, n_resamples=50)
    ext = extrapolate(offset_study, "offset", y="nll_toy", n_starts=1)
    figs = {"scaling": plots.plot_bits_scaling(df, "nll_toy"), "block": plots.plot_ablation(df, "nll_toy", "blocksize"),
            "dtype": plots.plot_ablation(df, "nll_toy", "dtype"), "fit": plots.plot_fit(fit, boot),
            "res": plots.plot_residuals(fit), "ext": plots.plot_extrapolation(ext)}
    ax = figs["scaling"].axes[0]
    assert ax.get_xscale() == "log" and "total model bits" in ax.get_xlabel() and "nats/token" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "4-bit" in labels and "Pareto frontier" in labels
    for name, fig in figs.items():
        paths = plots.save_figure(fig, tmp_path / "figures", name)
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        assert all(p.stat().st_size > 1000 for p in paths)


def _write_rows(study, df):
    (study / "rows").mkdir(parents=True)
    with open(study / "rows" / "part.jsonl", "w") as f:
        for rec in df.to_dict(orient="records"):
            f.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}) + "\n")


@pytest.mark.slow
def test_report_cli_on_tiny_study(tmp_path, synth):
    df = synth("offset", n_sizes=3, noise=0.003)
    df["entropy_rate"] = 1.5
    study = tmp_path / "toy-study"
    _write_rows(study, df)
    out = subprocess.run([sys.executable, "-m", "kscale.report", str(study), "--metric", "nll_toy", "--n-bootstrap", "200"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "4-bit" in out.stdout and "summary:" in out.stdout
    text = (study / "summary.md").read_text()
    assert "## Answer" in text and "E (known)" in text and "Extrapolation" in text
    assert (study / "best_per_budget.csv").exists()
    assert (study / "figures" / "toy-bits-scaling.png").exists()
    assert (study / "figures" / "toy-fit-offset.pdf").exists()


def test_report_on_degenerate_study_says_what_failed(tmp_path, synth):
    df = synth("offset", n_sizes=3)
    df.loc[df.bits != 16, "status"] = "error"
    df.loc[df.index[df.bits == 16][0], ["nll_toy", "ppl_toy"]] = [9.0, 8103.0]  # collapsed; 2 rows survive
    rep = write_report(tmp_path / "bad", df=df, metric="nll_toy", n_bootstrap=50)
    assert rep.summary_path.exists()
    assert any("law fit not possible" in p for p in rep.problems)
    assert "No law-based answer" in rep.answer
