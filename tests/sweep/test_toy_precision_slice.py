"""experiment=toy_precision's smallest slice end to end (issue 20 §4): one small rung trained at
w4 and at 16 bits (a training-precision comma list = one job per build), post bits 4 and 16, a
tiny eval; plan=true first prices both builds' training. And the one-line rejection of training
precision for a family kscale does not train."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kscale.config import ConfigError, _training_options

ROOT = Path(__file__).resolve().parents[2]
SLICE = ["experiment=toy_precision", "model.sizes=[L1-d4]", "model.revisions=null", "train_precision=full",
         "model.provider_options.train_bits_w=4,16", "model.provider_options.tokens_per_param=2",
         "eval.perplexity=[{dataset:toy,max_tokens:1024}]", "progress=false", "bits=[4,16]", "name=slice"]


def _sweep(*args: str, cache: Path) -> subprocess.CompletedProcess:
    # its own cache: the session's shared one may already hold the 16-bit L1-d4 another test trained
    env = dict(os.environ, HYDRA_FULL_ERROR="0", KSCALE_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_training_precision_is_rejected_for_a_family_kscale_does_not_train():
    with pytest.raises(ConfigError, match=r"model\.provider_options\.train_bits_kv: .*model=opt loads published"):
        _training_options("opt", {"train_bits_kv": 4})
    assert _training_options("toy", {"train_bits_w": 4, "seed": 0}) == {"train_bits_w": 4, "seed": 0}
    assert _training_options("opt", {"seed": 1}) == {"seed": 1}  # not training precision
    # full precision named explicitly is the default ladder: same options, same row keys
    assert _training_options("toy", {"train_bits_w": 16, "qat_from": 0.0, "train_bits_kv": 8}) == {"train_bits_kv": 8}


@pytest.mark.slow  # plan + two trainings of L1-d4 + 4 cells + the report (~90 s on a busy 2-core machine)
def test_smallest_slice_plans_trains_and_writes_rows_per_build(tmp_path):
    from kscale.results import load_results

    plan = _sweep(*SLICE, f"results_dir={tmp_path}", "plan=true", cache=tmp_path / "cache").stdout
    # one job per build, named by its precision; both builds' training priced (nothing cached yet)
    assert "toy-L1-d4[w4]" in plan and re.search(r"^toy-L1-d4 ", plan, re.M)
    assert re.search(r"training: 2 of 2 runs to train .* FLOP \(6·N·D\)", plan)
    assert not (tmp_path / "slice").exists()
    _sweep(*SLICE, f"results_dir={tmp_path}", cache=tmp_path / "cache")
    df = load_results(tmp_path / "slice")
    assert len(df) == 4 and (df["status"] == "ok").all()
    assert sorted(zip(df["train_bits_w"], df["bits"])) == [(4, 4), (4, 16), (16, 4), (16, 16)]
    assert set(df["train_bits_a"]) == {16} and set(df["train_bits_kv"]) == {16}
    w4 = df[df["train_bits_w"] == 4]
    assert all('"train_bits_w":4' in m for m in w4["model_options"])
    assert all('"train_bits_w"' not in m for m in df[df["train_bits_w"] == 16]["model_options"])
    # two builds are two models: their 16-bit losses differ
    base = df[df["bits"] == 16].set_index("train_bits_w")["nll_toy"]
    assert base[4] != base[16]
    summary = (tmp_path / "slice" / "summary.md").read_text()
    delta_low = w4.set_index("bits")["nll_toy"]
    row = re.search(r"^\| 4 \| 1 \| ([+-][0-9.e+-]+) \|", summary, re.M)
    assert "### Training precision" in summary and row
    assert float(row.group(1)) == pytest.approx(delta_low[4] - delta_low[16], rel=1e-3)
    # a second command finds both builds trained: plan prices no training
    again = _sweep(*SLICE, f"results_dir={tmp_path}", "plan=true", cache=tmp_path / "cache").stdout
    assert "training: 0 of 2 runs to train" in again
