"""Plots render headless and the report runs (also on tiny and degenerate studies)."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
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
    out = subprocess.run([sys.executable, "-m", "kscale.report", str(study), "--metric", "nll_toy", "--n-bootstrap", "200",
                          "--law", "offset"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "4-bit" in out.stdout and "summary:" in out.stdout
    text = (study / "summary.md").read_text()
    assert "## Answer" in text and "E (known)" in text and "Extrapolation" in text
    assert "### Which law" in text and "`offset` was asked for" in text  # the comparison is written either way
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


def test_config_difference_plot_draws_gap_to_best_type(offset_study):
    df = offset_study.copy()
    worse = df[df.bits == 4].assign(dtype="nf", nll_toy=lambda d: d["nll_toy"] + 0.01)
    better = df[df.bits == 3].assign(dtype="nf", nll_toy=lambda d: d["nll_toy"] - 0.02)
    df = pd.concat([df, worse, better], ignore_index=True)
    fig = plots.plot_config_difference(df, "nll_toy", "dtype", bits=[3, 4])
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(axes) == {"3-bit", "4-bit"}
    lines4 = {ln.get_label(): ln.get_ydata() for ln in axes["4-bit"].get_lines() if not ln.get_label().startswith("_")}
    np.testing.assert_allclose(lines4["int"], 0.0, atol=1e-12)  # int is best at 4 bits: on the zero line
    np.testing.assert_allclose(lines4["nf"], 0.01, atol=1e-9)
    lines3 = {ln.get_label(): ln.get_ydata() for ln in axes["3-bit"].get_lines() if not ln.get_label().startswith("_")}
    np.testing.assert_allclose(lines3["int"], 0.02, atol=1e-9)
    assert axes["4-bit"].get_xscale() == "log"
    # the log axis' tick labels do not overlap (matplotlib's default labels 2,3,4...×10^k on short axes)
    fig.canvas.draw()
    for ax in axes.values():
        labels = [t for t in ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
                  if t.get_text() and t.get_visible()]
        frame = ax.get_window_extent()
        boxes = sorted((bb for bb in (t.get_window_extent() for t in labels)
                        if frame.x0 - 1 <= (bb.x0 + bb.x1) / 2 <= frame.x1 + 1), key=lambda b: b.x0)
        assert len(boxes) >= 2
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in labels]
    plt.close(fig)


def _run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kscale.report", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_report_cli_refuses_bad_input_and_writes_nothing(tmp_path, synth, capsys):
    from kscale.report import main

    study = tmp_path / "s"
    _write_rows(study, synth("offset", n_sizes=3))
    for args, msg in ((["--law", "powr"], "Did you mean 'power'"), (["--law", "foo"], "unknown law 'foo'"),
                      (["--law", "qid"], "models degradation"), (["--metric", "acc_mean"], "Metrics in this study: nll_toy"),
                      (["--metric", "nll_tyo"], "Did you mean 'nll_toy'"),
                      (["--compare", "gptq-opt-wikitxt2"], "Did you mean 'gptq-opt-wikitext2'")):
        assert main([str(study), *args]) == 2, args
        err = capsys.readouterr().err
        assert msg in err, (args, err)
    assert sorted(p.name for p in study.iterdir()) == ["rows"]  # nothing written
    out = _run_cli(tmp_path / "missing")  # the real command line: exit status and no traceback
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = capsys.readouterr().out
    for opt in ("--metric", "--law", "--n-bootstrap", "--n-holdout", "--out", "--compare", "--threshold"):
        assert opt in helptext
    assert "held-out largest size" in helptext and "bootstrap resamples" in helptext


@pytest.mark.slow
def test_two_sizes_give_no_decision_probability(tmp_path, synth):
    df = synth("offset", n_sizes=2)
    rep = write_report(tmp_path / "two", df=df, metric="nll_toy", law="offset", n_bootstrap=50, n_holdout=0)
    assert any("rests on 2 model size(s)" in p for p in rep.problems)
    text = rep.summary_path.read_text()
    assert "P(optimal)" not in text and "Optimal precision: not reported" in text


@pytest.mark.slow
def test_report_on_accuracy_metric_is_higher_is_better(tmp_path, synth):
    df = synth("offset", n_sizes=4)
    df["acc_mean"] = 1.0 - df["nll_toy"] / 5.0  # higher is better; 4-bit is still the best precision
    out_dir = tmp_path / "out"
    rep = write_report(tmp_path / "acc", df=df, metric="acc_mean", law="offset", n_bootstrap=100, out_dir=out_dir)
    assert rep.summary_path == out_dir / "summary.md"
    assert "4-bit" in rep.answer and "acc_mean" in rep.answer
    seg = pd.read_csv(rep.table_path)
    # the best value under the largest budget is the highest accuracy in the table
    assert seg["best_value"].iloc[-1] == pytest.approx(df["acc_mean"].max())


@pytest.mark.slow
def test_report_compare_writes_markdown(tmp_path, synth):
    study = tmp_path / "c"
    _write_rows(study, synth("offset", n_sizes=3))
    out = _run_cli(study, "--n-bootstrap", "20", "--law", "offset", "--compare", "gptq-opt-wikitext2", "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    path = tmp_path / "o" / "compare-gptq-opt-wikitext2.md"
    assert path.exists() and "No cell of this study matches" in path.read_text()


@pytest.mark.slow
def test_report_training_tokens_section(tmp_path, tokens_study):
    """Issue 11 §2: ΔL vs training tokens, the law fit, the D-trend sentence and threshold tokens."""
    df = tokens_study("qid", noise=0.02)
    rep = write_report(tmp_path / "tok", df=df, metric="nll_toy", n_bootstrap=100)
    text = rep.summary_path.read_text()
    assert "### Degradation vs training tokens" in text and "last checkpoint" in text
    assert "degradation grows with training tokens" in rep.answer
    m = re.search(r"d log ΔL / d log D = ([0-9.]+) \(95% bootstrap interval \[([0-9.]+), ([0-9.]+)\]", rep.answer)
    assert m and float(m.group(2)) <= 0.5 <= float(m.group(3)) + 0.01
    assert "ΔL reaches 0.05 nats" in text
    names = {p.name for p in rep.figure_paths}
    assert {"toy-degradation-tokens.png", "toy-threshold-tokens.png"} <= names
    # a study with one checkpoint per size has no such section
    single = write_report(tmp_path / "one", df=df[df["n_tokens"] == df["n_tokens"].max()], metric="nll_toy",
                          n_bootstrap=0, n_holdout=0)
    assert "Degradation vs training tokens" not in single.summary_path.read_text()
