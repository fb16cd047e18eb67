"""Paired statistics against the 16-bit pass: every column against an independent full-logit
computation (float64, written out here), the top-k KL bound, exactness of the 16-bit row, the
paired SE beating the unpaired one on a trained toy model at 6 bits, and zero-shot flips."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from kscale.evaluate import EvalSuite, PerplexitySpec, ZeroShotSpec
from kscale.evaluate.paired import cluster_mean_se
from kscale.models.tokenizers import gpt2_tokenizer
from kscale.paths import default_cache_dir

SEQ, WINDOWS, VOCAB = 32, 6, 50257


@pytest.fixture(scope="module")
def tok(data_dir):
    return gpt2_tokenizer(data_dir)


@pytest.fixture(scope="module")
def pair():
    """A tiny GPT-2 and a perturbed copy (stands in for a quantized model)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=VOCAB)).eval()
    with torch.no_grad():  # sharpen the distributions so KL/Δp/top-1 are not all ~0
        base.transformer.wte.weight.mul_(20)
    other = copy.deepcopy(base)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * p.std() * torch.randn_like(p))
    return base, other


def _windows(tok, data_dir):
    from kscale.data import load_corpus

    rows = load_corpus("wikitext2", data_dir=data_dir).rows
    ids = tok("\n\n".join(rows[:400]), return_tensors="pt").input_ids[0, : SEQ * WINDOWS]
    return ids.view(WINDOWS, SEQ)


def _by_hand(model, windows):
    with torch.no_grad():
        return torch.log_softmax(model(windows[:, :-1]).logits.double(), -1)  # [W, SEQ-1, V]


def _se(x):  # batch means over windows, written out: windows are the independent units
    sums = x.reshape(WINDOWS, -1).sum(1)
    n = x.size
    m = sums.sum() / n
    return math.sqrt(WINDOWS / (WINDOWS - 1) * ((sums - m * (SEQ - 1)) ** 2).sum()) / n


def test_every_paired_statistic_matches_full_logits(tok, pair, data_dir):
    base, other = pair
    spec = PerplexitySpec("wikitext2", "gptq", seqlen=SEQ, max_tokens=SEQ * WINDOWS, kl_top_k=VOCAB)
    suite = EvalSuite([spec], tok, data_dir=data_dir, cache_dir=default_cache_dir(), batch_size=4)
    ref = suite.set_reference(base, progress=False)
    got = suite.run(other, progress=False)

    win = _windows(tok, data_dir)
    lp, lq = _by_hand(base, win), _by_hand(other, win)
    tgt = win[:, 1:, None]
    nll16 = (-lp.gather(-1, tgt)[..., 0]).numpy().ravel()
    nllq = (-lq.gather(-1, tgt)[..., 0]).numpy().ravel()
    kl = (lp.exp() * (lp - lq)).sum(-1).numpy().ravel()
    dp = np.exp(-nllq) - np.exp(-nll16)
    same = (lp.argmax(-1) == lq.argmax(-1)).numpy().ravel().astype(float)
    d = nllq - nll16
    expect = {
        "nll_wikitext2": nllq.mean(), "nll_wikitext2_se": _se(nllq),
        "dnll_wikitext2": d.mean(), "dnll_wikitext2_se": _se(d), "ln_ppl_ratio_wikitext2": d.mean(),
        "dnll_wikitext2_unpaired_se": math.hypot(_se(nllq), _se(nll16)),
        "kl_wikitext2": kl.mean(), "kl_wikitext2_se": _se(kl), "kl_wikitext2_median": np.median(kl),
        "kl_wikitext2_p90": np.percentile(kl, 90), "kl_wikitext2_p99": np.percentile(kl, 99),
        "kl_wikitext2_max": kl.max(), "kl_wikitext2_tail": 0.0,
        "p_wikitext2": np.exp(-nllq).mean(), "p_wikitext2_se": _se(np.exp(-nllq)),
        "dp_wikitext2": dp.mean(), "dp_wikitext2_se": _se(dp),
        "dp_wikitext2_rms": math.sqrt((dp**2).mean()),
        "dp_wikitext2_rms_se": _se(dp**2) / (2 * math.sqrt((dp**2).mean())),
        "dp_wikitext2_min": dp.min(), "dp_wikitext2_p1": np.percentile(dp, 1),
        "dp_wikitext2_median": np.median(dp), "dp_wikitext2_p99": np.percentile(dp, 99), "dp_wikitext2_max": dp.max(),
        "top1_wikitext2": same.mean(), "top1_wikitext2_se": _se(same),
    }
    assert 0.05 < kl.mean() < 5 and 0.05 < same.mean() < 0.95  # a comparison with something to measure
    for k, v in expect.items():
        assert got[k] == pytest.approx(float(v), abs=1e-6, rel=1e-6), k
    assert got["ntok_wikitext2"] == WINDOWS * (SEQ - 1) and got["subset_wikitext2"] == 1.0
    assert got["nll_wikitext2_paired"] == pytest.approx(got["nll_wikitext2"], abs=1e-9)
    paired = [k for k in got if k.startswith(("dnll_", "ln_ppl", "kl_", "dp_")) and "unpaired" not in k]
    assert all(ref[k] == 0.0 for k in paired), [k for k in paired if ref[k] != 0.0]
    assert ref["top1_wikitext2"] == 1.0 and ref["top1_wikitext2_se"] == 0.0

    # the default top-64 record: a lower bound, and kl_tail bounds what it leaves out
    small = EvalSuite([PerplexitySpec("wikitext2", "gptq", seqlen=SEQ, max_tokens=SEQ * WINDOWS)], tok,
                      data_dir=data_dir, cache_dir=default_cache_dir(), batch_size=4)
    assert small.set_reference(base, progress=False)["kl_wikitext2_tail"] == 0.0  # itself: nothing left out
    approx = small.run(other, progress=False)
    assert approx["kl_wikitext2"] <= kl.mean() + 1e-9
    assert kl.mean() <= approx["kl_wikitext2"] + approx["kl_wikitext2_tail"] + 1e-9
    assert approx["dnll_wikitext2"] == pytest.approx(d.mean(), abs=1e-6)  # exact without full logits


def test_cluster_se_is_the_iid_se_for_independent_windows():
    """One token per window: batch means reduce to the sample SD / sqrt(n)."""
    x = np.random.default_rng(0).normal(size=50)
    mean, se = cluster_mean_se(x, np.arange(50))
    assert mean == pytest.approx(x.mean()) and se == pytest.approx(x.std(ddof=1) / math.sqrt(50))
    assert math.isnan(cluster_mean_se(x, np.array([0]))[1])


@pytest.mark.slow
def test_zeroshot_flips_and_paired_accuracy_difference(tok, pair, data_dir):
    from kscale.evaluate.zeroshot import TASKS, item_correct, load_task_items, loglikelihood, encode_pair

    base, other = pair
    suite = EvalSuite([ZeroShotSpec("winogrande", limit=40)], tok, data_dir=data_dir, cache_dir=default_cache_dir(),
                      batch_size="auto")
    ref = suite.set_reference(base, progress=False)
    got = suite.run(other, progress=False)
    items = load_task_items("winogrande", data_dir=data_dir, limit=40)
    enc = [encode_pair(tok, r.context, r.continuation) for it in items for r in it.requests]
    c16 = item_correct(TASKS.get("winogrande"), items, loglikelihood(base, enc, max_length=128))
    cq = item_correct(TASKS.get("winogrande"), items, loglikelihood(other, enc, max_length=128))
    flips = np.abs(cq - c16)
    assert flips.sum() >= 2  # something flipped
    assert got["flips_winogrande"] == pytest.approx(flips.mean())
    assert got["flips_winogrande_se"] == pytest.approx(flips.std(ddof=1) / math.sqrt(40))
    assert got["dacc_winogrande"] == pytest.approx(got["acc_winogrande"] - ref["acc_winogrande"])
    assert got["dacc_winogrande_se"] == pytest.approx((cq - c16).std(ddof=1) / math.sqrt(40))
    assert ref["flips_winogrande"] == 0.0 and ref["dacc_winogrande_se"] == 0.0
    assert got["acc_winogrande_se"] == pytest.approx(cq.std(ddof=1) / math.sqrt(40))


@pytest.mark.slow
def test_paired_se_beats_unpaired_on_a_trained_toy_model_at_6_bits():
    """At 6 bits the quantized model errs where its 16-bit model errs: the paired SE of dnll is
    far below the SE of the difference of two independent NLL means (issue 19: >= 5x)."""
    import kscale.toy  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kscale.models import PROVIDERS, get_family
    from kscale.quant import QuantSpec, quantize_model

    opts = {"language": {"vocab_size": 24, "n_bigram": 6, "n_successors": 2, "alpha": 0.5, "seed": 5},
            "seqlen": 16, "tokens_per_param": 8, "lr": 0.02, "min_steps": 40, "progress": False,
            "ladder": {"c": {"n_layer": 1, "d_model": 24, "n_head": 2, "batch_size": 16}},
            "corpus_tokens": 6000, "doc_tokens": 1500, "row_tokens": 50}
    (path,) = PROVIDERS.get("toy").ensure(["c"], opts).values()
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    suite = EvalSuite([PerplexitySpec("toy", "gptq", seqlen=16)], tok, cache_dir=default_cache_dir(),
                      batch_size=64, corpus_options={"toy": opts})
    suite.set_reference(model, progress=False)
    quantize_model(model, QuantSpec(6, "int", blocksize=16), module_filter=get_family("toy").module_filter)
    got = suite.run(model, progress=False)
    assert got["nwin_toy"] >= 100
    assert got["dnll_toy"] != 0.0
    assert got["dnll_toy_unpaired_se"] >= 5 * got["dnll_toy_se"], (got["dnll_toy_unpaired_se"], got["dnll_toy_se"])
