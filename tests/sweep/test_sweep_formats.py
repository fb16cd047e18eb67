"""Issue 18 §1/§3 end to end: ``format=`` is a sweep axis; each format takes only its own axes,
rows carry only the columns that applied, GGUF rows have nominal ``bits`` and exact
``bits_per_param``, and ``imatrix=true`` cells record the calibration they were weighted by."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kscale.results import load_results

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_format_axis_expands_per_format_with_exact_bits(tmp_path):
    pytest.importorskip("kscale.quant.gguf")
    pytest.importorskip("kscale.quant.mx")
    # L2-d32: every matrix has rows of 32 or 128 values, whole q4_0 / mxfp4 blocks
    args = ["model.sizes=[L2-d32]", "model.provider_options.tokens_per_param=2",
            "eval.perplexity=[{dataset:toy,max_tokens:1024}]", "report=false", "progress=false",
            "format=blockwise,q4_0,mxfp4", "bits=4,16", "dtype=nf", "imatrix=false,true",
            "method_options.rtn={}", f"results_dir={tmp_path}", "name=fmt"]
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    proc = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = load_results(tmp_path / "fmt")
    df = df.assign(format=df["format"].fillna("baseline")).set_index("format", drop=False)
    assert (df["status"] == "ok").all()
    # baseline + nf4 + q4_0 x imatrix{false,true} + mxfp4 (which takes neither dtype nor imatrix)
    assert sorted(map(str, df["format"])) == ["baseline", "blockwise", "mxfp4", "q4_0", "q4_0"]
    q4 = df.loc["q4_0"]
    assert list(q4["bits"]) == [4, 4] and (q4["bits_per_param"] == 4.5).all()  # 18 bytes / 32 values
    assert sorted(q4["imatrix"]) == [False, True]
    assert q4["dtype"].isna().all() and q4["blocksize"].isna().all()  # no column that did not apply
    assert df.loc["mxfp4", "bits_per_param"] == 4.25 and df.loc["blockwise", "bits_per_param"] == 4.25
    assert df.loc["mxfp4", "imatrix"] != df.loc["mxfp4", "imatrix"]  # NaN: mxfp4 takes no imatrix
    with_im = q4[q4["imatrix"] == True]  # noqa: E712
    assert with_im["calib_dataset"].item() == "toy" and with_im["calib_nsamples"].item() == 128
    assert q4[q4["imatrix"] == False]["calib_dataset"].isna().all()  # noqa: E712
    # weighting the rounding by the imatrix changes the model (and the loss), not the bits
    assert q4["nll_toy"].nunique() == 2 and q4["total_bits"].nunique() == 1
    # the ledger counts every quantized matrix at exactly 4.5 bits, the rest at 16
    base = df.loc["baseline"]
    n_q = q4["n_quantized"].iloc[0]
    assert q4["total_bits"].iloc[0] == base["total_bits"] - 16 * n_q + 4.5 * n_q
