"""Issue 6: `python run_sweep.py` with no grid overrides runs the whole story end to end —
toy ladder x bits {3,4,5,6,8,16} x dtypes {int,float,nf,quantile} at B=64, then the fit,
the figures, the summary and the printed answer. Only the budgets are shrunk here (three
small rungs, 2 tokens/parameter, 1024 eval tokens), never the grid."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kscale.results import load_results

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_default_sweep_produces_table_figures_summary_and_answer(tmp_path):
    args = ["model.sizes=[L1-d4,L1-d8,L1-d16]", "model.provider_options.tokens_per_param=2",
            "eval.perplexity=[{dataset:toy,max_tokens:1024}]", "progress=false",
            f"results_dir={tmp_path}"]
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    proc = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    study = tmp_path / "default"  # the default study name

    df = load_results(study)
    # the default grid: per model the 16-bit baseline once + 4 dtypes x 5 quantized precisions
    assert len(df) == 3 * (1 + 4 * 5)
    assert set(df["dtype"][df["bits"] < 16]) == {"int", "float", "nf", "quantile"}
    assert sorted(set(df["bits"])) == [3, 4, 5, 6, 8, 16]
    assert set(df["blocksize"].dropna()) == {64}
    assert (df["status"] == "ok").all()
    # every toy row carries the language's exact entropy rate, and no model beats it
    assert df["entropy_rate"].nunique() == 1
    assert (df["nll_toy"] > df["entropy_rate"]).all()

    assert (study / "table.parquet").exists() and (study / "table.csv").exists()
    summary = (study / "summary.md").read_text()
    assert "## Answer" in summary and "optimal precision" in summary
    pngs = sorted(p.name for p in (study / "figures").glob("*.png"))
    assert "toy-bits-scaling.png" in pngs and len(pngs) >= 3
    assert all((study / "figures" / p).stat().st_size > 5_000 for p in pngs)
    # the run ends by saying where things are and what the answer is
    out = proc.stdout
    assert str(study / "summary.md") in out or "summary.md" in out
    assert "optimal precision is" in out and "bootstrap probability" in out
