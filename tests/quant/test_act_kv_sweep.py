"""Issue 20 §1 end to end: act_bits / kv_bits as sweep axes on the toy family (GPT-2 layout).

A 2-cell toy sweep at act_bits=8 kv_bits=4 (weights 16 and 4 bit) writes rows that carry the
run-time precision, the weights' ledger unchanged, and the KV cache's bits per token of context.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kscale.results import load_results, row_key
from kscale.sweep.grid import expand_cells

ROOT = Path(__file__).resolve().parents[2]


def test_off_runtime_axes_leave_cells_and_keys_unchanged():
    plain = expand_cells({"bits": [4, 16], "dtype": "int"})
    off = expand_cells({"bits": [4, 16], "dtype": "int", "act_bits": 16, "kv_bits": 16,
                        "act_granularity": "block32", "kv_granularity": "token"})
    assert off == plain and all(c.runtime is None for c in off)
    ident = plain[1].identity()
    assert ident["act_bits"] == 16 and ident["kv_bits"] == 16 and ident["kv_granularity"] is None
    legacy = {k: v for k, v in ident.items() if not k.startswith(("act_", "kv_"))}
    assert row_key(ident) == row_key(legacy)  # rows written before issue 20 keep their keys
    on = expand_cells({"bits": [4, 16], "dtype": "int", "act_bits": [16, 8], "kv_bits": 4})
    assert len(on) == 4 and not any(c.is_baseline for c in on)  # W16A16KV4 is evaluated too
    assert len({row_key(c.identity()) for c in on} | {row_key(c.identity()) for c in plain}) == 6


def test_bad_runtime_axis_names_the_grid_point():
    with pytest.raises(ValueError, match="kv_granularity.*grid point"):
        expand_cells({"bits": 4, "kv_bits": 4, "kv_granularity": "channel"})
    with pytest.raises(ValueError, match="act_granularity"):
        expand_cells({"bits": 4, "act_bits": 8, "act_granularity": "head"})


@pytest.mark.slow
def test_toy_sweep_with_act8_kv4(tmp_path):
    args = ["model=toy", "model.sizes=[L1-d8]", "model.provider_options.tokens_per_param=2", "eval=toy",
            "eval.perplexity=[{dataset:toy,max_tokens:1024}]", "report=false", "progress=false",
            "bits=4,16", "dtype=int", "act_bits=8", "kv_bits=4", "method_options.rtn={}",
            f"results_dir={tmp_path}", "name=actkv"]
    proc = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT,
                          env=dict(os.environ, HYDRA_FULL_ERROR="0"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = load_results(tmp_path / "actkv").sort_values("bits")
    assert len(df) == 2 and (df["status"] == "ok").all()
    assert list(df["act_bits"]) == [8, 8] and list(df["kv_bits"]) == [4, 4]
    assert list(df["act_granularity"]) == ["token"] * 2 and list(df["kv_granularity"]) == ["head"] * 2
    assert set(df["kv_site"]) == {"projection_output_pre_rope"}
    w4, w16 = df.iloc[0], df.iloc[1]
    assert w16["bits_per_param"] == 16 and w4["bits_per_param"] < 5  # the ledger: weights only
    # L1-d8: 1 layer, d_model 8 -> 2 x 1 x (8 x 4 bits + n_heads fp16 constants)
    from transformers import AutoConfig

    from kscale.models import PROVIDERS

    path = PROVIDERS.get("toy").locate("L1-d8", {"tokens_per_param": 2})
    cfg = AutoConfig.from_pretrained(path)
    assert w16["kv_bits_per_token"] == 2 * cfg.n_layer * (cfg.n_embd * 4 + cfg.n_head * 16)
    assert w16["kl_toy"] > 0  # 8-bit activations and 4-bit K/V moved the 16-bit weights' output
    assert w4["nll_toy"] > w16["nll_toy"] - 1e-3


def test_pareto_labels_name_the_runtime_precision():
    import pandas as pd

    from kscale.pareto import config_key

    df = pd.DataFrame([
        dict(method="rtn", dtype="int", bits=4, blocksize=64, act_bits=8, act_granularity="token",
             kv_bits=4, kv_granularity="head"),
        dict(method="none", bits=16, act_bits=16, kv_bits=16),
        dict(method="none", bits=16, act_bits=8, act_granularity="block32", kv_bits=16),
    ])
    assert list(config_key(df)) == ["rtn int 4-bit B=64 A8 KV4-head", "16-bit baseline",
                                    "16-bit weights A8-block32"]


def test_add_delta_baseline_is_the_row_with_16_bit_activations_and_kv():
    import pandas as pd

    from kscale.results import add_delta

    df = pd.DataFrame([
        dict(family="toy", size="a", method="none", bits=16, act_bits=16, kv_bits=16, nll=1.0, status="ok"),
        dict(family="toy", size="a", method="none", bits=16, act_bits=8, kv_bits=4, nll=1.5, status="ok"),
        dict(family="toy", size="a", method="rtn", bits=4, act_bits=8, kv_bits=4, nll=2.25, status="ok"),
    ])
    assert list(add_delta(df, "nll")["delta_nll"]) == [0.0, 0.5, 1.25]


@pytest.mark.parametrize("override, message", [
    ("act_bits=12", "invalid override act_bits=12: act_bits must be an integer in 2..8, or 16"),
    ("kv_granularity=channel", "invalid override kv_granularity=channel: .*token, head or block<B>"),
    ("act_granularity=head", "invalid override act_granularity=head"),
    ("kv_dtype=quantile", "invalid override kv_dtype=quantile: .*mixes tokens"),
])
def test_bad_runtime_override_is_rejected_naming_it(override, message):
    from hydra import compose, initialize_config_dir

    from kscale.config import ConfigError, build_plan

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("sweep", overrides=["model=toy", "model.sizes=[L1-d8]", "bits=4", override],
                      return_hydra_config=True)
    with pytest.raises(ConfigError, match=message):
        build_plan(cfg)
