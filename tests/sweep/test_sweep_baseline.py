"""The 16-bit baseline is an ordinary cell: evaluated through the same suite as every quantized
cell, so its row has exactly their metric columns (issue 10 §2), whatever the eval asks for."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kscale.config import build_plan
from kscale.results import load_results
from kscale.sweep import run_plan

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT2 = ROOT.parent / "shared" / "data" / "models" / "tiny-gpt2"

pytestmark = pytest.mark.slow


def _metric_columns(row) -> set[str]:
    prefixes = ("ppl_", "nll_", "bpb_", "kl_", "top1_", "acc_", "ntok_")
    return {k for k, v in row.items() if k.startswith(prefixes) and v == v}  # not NaN


def test_baseline_row_has_every_metric_of_a_quantized_row_with_kl_off(tmp_path):
    overrides = [
        "model=gpt2", "model.sizes=[small]", f"model.local_paths.small={TINY_GPT2}",
        "eval=paper", "eval.kl=false",
        "eval.perplexity=[{dataset:wikitext2,protocol:gptq,seqlen:64,max_tokens:512}]",
        "eval.zeroshot=[{task:piqa,limit:6},{task:winogrande,limit:6}]",
        "bits=[16,4]", "dtype=[int]", f"results_dir={tmp_path}", "name=base", "progress=false",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=overrides, return_hydra_config=True)
    run_plan(build_plan(cfg))
    df = load_results(tmp_path / "base")
    assert sorted(df["status"]) == ["ok", "ok"]
    base = df[df["bits"] == 16].iloc[0].to_dict()
    quant = df[df["bits"] == 4].iloc[0].to_dict()
    assert base["method"] == "none" and base["bits_per_param"] == 16
    assert _metric_columns(base) == _metric_columns(quant)
    assert {"ppl_wikitext2", "acc_piqa", "acc_winogrande", "acc_mean"} <= _metric_columns(base)
    assert not any(k.startswith("kl_") for k in _metric_columns(base))  # kl=false: none anywhere
    assert base["model_dtype"] == "float32" or base["device"].startswith("cuda")
    assert base["ppl_wikitext2"] != quant["ppl_wikitext2"]  # the 4-bit cell really is quantized
