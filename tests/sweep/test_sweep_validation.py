"""Combinations that mean nothing are rejected before anything loads, naming the rule; what a
row records is what ran (issue 10: every number a sweep writes is the number it claims)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kscale.config import ConfigError, build_plan
from kscale.models.placement import cuda_available

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT2 = ROOT.parent / "shared" / "data" / "models" / "tiny-gpt2"
GPT2 = ["model=gpt2", "model.sizes=[small]", f"model.local_paths.small={TINY_GPT2}"]


def _plan(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=list(overrides), return_hydra_config=True)
    return build_plan(cfg)


def test_baseline_method_at_4_bits_is_rejected_naming_the_rule():
    with pytest.raises(ConfigError, match=r"method=none .*valid only with bits=16; got bits=4"):
        _plan("method=none", "bits=[4]")
    with pytest.raises(ConfigError, match=r"method=none .*got bits=4"):  # in a product, too
        _plan("method=[none,rtn]", "bits=[16,4]")
    cells = _plan("method=[rtn]", "bits=[16,4]", "dtype=int").cells  # bits=16 is the baseline
    assert [(c.method, c.quant.bits) for c in cells] == [("none", 16), ("rtn", 4)]
    assert [c.method for c in _plan("method=none", "bits=16").cells] == ["none"]


def test_the_baseline_row_has_no_dtype_or_blocksize():
    (baseline, *_rest) = _plan("bits=[16,4]", "dtype=[nf]", "blocksize=128").cells
    ident = baseline.identity()
    assert ident["method"] == "none" and ident["bits"] == 16
    assert ident["dtype"] is None and ident["blocksize"] is None and ident["scale_bits"] is None


@pytest.mark.parametrize("overrides, needles", [
    (["model=toy", "eval=paper"], ["model=toy", "wikitext2", "toy"]),
    (["model=toy", "eval=toy", "eval.zeroshot=[{task:piqa,limit:2}]"], ["zero-shot", "piqa"]),
    ([*GPT2, "eval=toy"], ["model=gpt2", "'toy'"]),
    ([*GPT2, "method=gptq", "bits=[4]", "method_options.gptq.dataset=toy"], ["method_options.gptq.dataset", "'toy'"]),
    (["model=toy", "method=gptq", "bits=[4]", "method_options.gptq.dataset=wikitext2"], ["model=toy", "wikitext2"]),
])
def test_a_corpus_that_is_not_the_models_language_is_rejected(overrides, needles):
    with pytest.raises(ConfigError) as err:
        _plan(*overrides)
    for needle in needles:
        assert needle in str(err.value)


def test_real_family_defaults_to_wikitext2_auto_dtype_and_device():
    plan = _plan(*GPT2, "bits=[4]")
    assert [s.dataset for s in plan.eval.specs] == ["wikitext2"]
    (spec,) = plan.models
    expected = ("cuda", "float16") if cuda_available() else ("cpu", "float32")
    assert (spec.device, spec.dtype) == expected  # fp16 matmuls on a CPU are emulated: fp32 there
    assert _plan(*GPT2, "model.dtype=bfloat16").models[0].dtype == "bfloat16"


@pytest.mark.skipif(cuda_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_config_error_not_a_traceback():
    with pytest.raises(ConfigError, match=r"model.device=cuda.*no CUDA.*model.device=auto"):
        _plan(*GPT2, "model.device=cuda")


def test_method_options_are_validated_by_the_method():
    with pytest.raises(ConfigError, match=r"method_options.gptq.*'dampp'.*Did you mean 'damp'"):
        _plan("method=gptq", "bits=[4]", "+method_options.gptq.dampp=0.1")
    with pytest.raises(ConfigError, match=r"Did you mean 'gptq'"):
        _plan("method=gptqq", "bits=[4]")


def test_an_eval_corpus_missing_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="c4"):
        _plan(*GPT2, "eval.perplexity.0.dataset=c4")
    assert time.perf_counter() - start < 30  # one clear error, not minutes of hub retries


def test_gptq_calibration_split_is_recorded_resolved(data_dir):
    from transformers import AutoTokenizer

    from kscale.quant.calibration import CalibrationConfig, calibration_tokens

    tok = AutoTokenizer.from_pretrained(TINY_GPT2)
    cal = calibration_tokens(CalibrationConfig(nsamples=2, seqlen=16), tok, data_dir=data_dir)
    assert cal.config.to_row()["calib_split"] == "test"  # the local WikiText-2 file it read
    assert cal.config.seqlen == 16 and tuple(cal.tokens.shape) == (2, 16)
