"""The 16-bit reference pass yields the full metric set, through the same path as run();
named specs, rolling defaults (model context, max_docs) and cost accounting."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kscale.evaluate import EvalSuite, PerplexitySpec, ZeroShotSpec, eval_specs_from_config
from kscale.models.tokenizers import gpt2_tokenizer
from kscale.paths import default_cache_dir

CTX = 64


@pytest.fixture(scope="module")
def tok(data_dir):
    return gpt2_tokenizer(data_dir)


@pytest.fixture(scope="module")
def model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=CTX, vocab_size=50257)).eval()


def _specs():
    return [
        PerplexitySpec("wikitext2", "gptq", seqlen=32, max_tokens=200, kl=True, kl_top_k=50),
        PerplexitySpec("wikitext2", "rolling", max_docs=2, max_tokens=500, kl=False, name="wt2_rolling"),
        PerplexitySpec("ptb", "sliding", seqlen=32, stride=16, max_tokens=120, kl=False),
        ZeroShotSpec("lambada", limit=3), ZeroShotSpec("piqa", limit=2),
        ZeroShotSpec("hellaswag", limit=2), ZeroShotSpec("winogrande", limit=2),
    ]


@pytest.mark.slow
def test_reference_has_run_keys_and_values(tok, model, data_dir):
    suite = EvalSuite(_specs(), tok, data_dir=data_dir, cache_dir=default_cache_dir(), batch_size="auto")
    ref = suite.set_reference(model, progress=False)
    ref_tokens = suite.last_tokens
    got = suite.run(model, progress=False)
    assert set(ref) == set(got)
    for key in ("ppl_wikitext2", "ntok_wikitext2", "bpb_wt2_rolling", "word_ppl_wt2_rolling", "nll_ptb",
                "kl_wikitext2", "top1_wikitext2", "acc_lambada", "ppl_lambada", "acc_norm_piqa",
                "acc_norm_hellaswag", "acc_winogrande", "acc_mean", "acc_mean_stderr"):
        assert key in ref, key
    assert "kl_wt2_rolling" not in ref and "top1_wt2_rolling" not in ref  # kl=false
    assert "kl_ptb" not in ref and "top1_ptb" not in ref and "dnll_ptb" in ref  # kl=false: paired NLL only
    for k in ref:  # same model, same path: same numbers; except the KL tail bound: the reference pass
        if k.endswith("_tail"):  # knows it is the reference (0), a later run can only bound the tail
            assert ref[k] == 0.0 and got[k] >= 0.0, k
            continue
        assert ref[k] == pytest.approx(got[k], rel=1e-9, abs=1e-9), k
    assert ref["top1_wikitext2"] == 1.0
    # the 16-bit row against itself: every paired statistic exactly zero
    for k in ("dnll_wikitext2", "dnll_wikitext2_se", "kl_wikitext2", "kl_wikitext2_max", "kl_wikitext2_se",
              "dp_wikitext2_rms", "dp_wikitext2_min", "dp_wikitext2_max", "dnll_ptb", "flips_piqa", "dacc_lambada"):
        assert ref[k] == 0.0 and got[k] == 0.0, k
    # costs: every real input token once, same for both passes
    ppl_tokens = sum(len(w.ids) - 1 for p in suite._ppl for w in p.windows)
    zs_tokens = sum(min(len(c) + len(x), CTX + 1) - 1 for t in suite._tasks for c, x in t.encoded)  # truncated
    assert ref_tokens == suite.last_tokens == ppl_tokens + zs_tokens
    assert suite.batch_size_resolved == 2048 // CTX  # auto on CPU: 2048 tokens at the longest input

    # batch size does not change the numbers
    one = EvalSuite(_specs(), tok, data_dir=data_dir, cache_dir=default_cache_dir(), batch_size=1)
    ref1 = one.set_reference(model, progress=False)
    assert one.batch_size_resolved == 1
    for k in ref:
        assert ref1[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k
    assert {k: v for k, v in ref1.items() if k.startswith("acc_") and "stderr" not in k} == \
           {k: v for k, v in ref.items() if k.startswith("acc_") and "stderr" not in k}


def test_reference_without_kl_specs_still_returns_metrics(tok, model, data_dir):
    spec = PerplexitySpec("wikitext2", "gptq", seqlen=32, max_tokens=100, kl=False)
    suite = EvalSuite([spec, ZeroShotSpec("winogrande", limit=2)], tok, data_dir=data_dir,
                      cache_dir=default_cache_dir())
    ref = suite.set_reference(model, progress=False)
    assert set(ref) == set(suite.run(model, progress=False))
    assert {"ppl_wikitext2", "acc_winogrande", "acc_mean"} <= set(ref)


@pytest.mark.slow
def test_rolling_defaults_to_model_context_and_max_docs(tok, model, data_dir):
    from kscale.data import load_corpus
    from kscale.evaluate import wikitext_detokenizer

    spec = PerplexitySpec("wikitext2", "rolling", max_docs=2, kl=False)
    suite = EvalSuite([spec], tok, data_dir=data_dir, cache_dir=default_cache_dir(), seqlen_default=32)
    with pytest.raises(ValueError, match="model's context"):
        suite.identity()
    assert "seqlen=64(model) " in suite.identity(model)["eval_wikitext2"]
    assert "max_docs=2" in suite.identity()["eval_wikitext2"]
    got = suite.run(model, progress=False)
    lens = [len(tok(wikitext_detokenizer(d), add_special_tokens=False).input_ids)
            for d in load_corpus("wikitext2", data_dir=data_dir).documents[:2]]
    assert got["ntok_wikitext2"] == sum(lens)
    assert got["nwin_wikitext2"] == sum(math.ceil(n / CTX) for n in lens)  # windows of the model's 64


def test_named_specs_for_one_dataset(tok, model, data_dir):
    with pytest.raises(ValueError, match="distinct name"):
        eval_specs_from_config({"perplexity": [{"dataset": "wikitext2", "seqlen": 32},
                                               {"dataset": "wikitext2", "seqlen": 16}]})
    with pytest.raises(ValueError, match="max_docs applies"):
        PerplexitySpec("wikitext2", "gptq", max_docs=3)
    specs = eval_specs_from_config({"kl": False, "perplexity": [
        {"dataset": "wikitext2", "seqlen": 32, "max_tokens": 96, "name": "wt2_32"},
        {"dataset": "wikitext2", "seqlen": 16, "max_tokens": 96, "name": "wt2_16"}]})
    suite = EvalSuite(specs, tok, data_dir=data_dir, cache_dir=default_cache_dir())
    ident = suite.identity()
    assert "seqlen=32" in ident["eval_wt2_32"] and "seqlen=16" in ident["eval_wt2_16"]
    got = suite.run(model, progress=False)
    assert got["ntok_wt2_32"] == 3 * 31 and got["ntok_wt2_16"] == 6 * 15
    assert got["nll_wt2_32"] != got["nll_wt2_16"]
    assert np.isfinite(got["ppl_wt2_16"])
