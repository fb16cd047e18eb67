"""Sequential evaluation: a cell stops once its paired dnll SE meets eval.target_se, on a seeded
prefix of the windows that every cell shares; the reference always covers the full set."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from kscale.evaluate import EvalSuite, PerplexitySpec, SequentialSpec, ZeroShotSpec, sequential_from_config
from kscale.models.tokenizers import gpt2_tokenizer
from kscale.paths import default_cache_dir

SEQ, WINDOWS = 16, 96


@pytest.fixture(scope="module")
def setup(data_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64)).eval()
    with torch.no_grad():
        base.transformer.wte.weight.mul_(20)
    other = copy.deepcopy(base)
    with torch.no_grad():
        for p in other.transformer.h.parameters():
            p.add_(0.2 * p.std() * torch.randn_like(p))
    return gpt2_tokenizer(data_dir), base, other


def _suite(tok, data_dir, seq):
    spec = PerplexitySpec("wikitext2", "gptq", seqlen=SEQ, max_tokens=SEQ * WINDOWS)
    return EvalSuite([spec], tok, data_dir=data_dir, cache_dir=default_cache_dir(), batch_size=4, sequential=seq)


def test_stops_at_target_on_the_seeded_prefix(setup, data_dir):
    tok, base, other = setup
    full = _suite(tok, data_dir, None)
    full.set_reference(base, progress=False)
    everything = full.run(other, progress=False)
    assert everything["nwin_wikitext2"] == WINDOWS and everything["subset_wikitext2"] == 1.0
    target = 2.5 * everything["dnll_wikitext2_se"]  # needs ~1/6 of the windows
    seq = SequentialSpec(target_se=target, min_windows=8, order_seed=3)
    suite = _suite(tok, data_dir, seq)
    ref = suite.set_reference(base, progress=False)
    assert ref["nwin_wikitext2"] == WINDOWS and ref["subset_wikitext2"] == 1.0  # the reference is full
    got = suite.run(other, progress=False)
    n = int(got["nwin_wikitext2"])
    assert 8 <= n < WINDOWS / 2 and n % 4 == 0  # checked after each batch of 4 windows
    assert got["dnll_wikitext2_se"] <= target
    assert got["ntok_wikitext2"] == n * (SEQ - 1) and got["subset_wikitext2"] == pytest.approx(n / WINDOWS)
    assert suite.last_tokens == n * (SEQ - 1)  # the stopped cell read only its windows
    # the windows used are the first n of the seeded order: recompute their dnll by hand
    order = np.random.default_rng(3).permutation(WINDOWS)[:n]
    p = full._ppl[0]
    with torch.no_grad():
        x = torch.as_tensor(np.stack([p.windows[i].ids for i in order]))
        d = [torch.nn.functional.cross_entropy(m(x[:, :-1]).logits.transpose(1, 2), x[:, 1:]).item()
             for m in (other, base)]
    assert got["dnll_wikitext2"] == pytest.approx(d[0] - d[1], abs=1e-5)
    # every cell shares the prefix: a second run stops at the same place with the same numbers
    again = suite.run(other, progress=False)
    assert again["nwin_wikitext2"] == n and again["dnll_wikitext2"] == got["dnll_wikitext2"]


def test_unreachable_target_caps_at_the_full_set_and_zeroshot_items_stop(setup, data_dir):
    tok, base, other = setup
    seq = SequentialSpec(target_se=1e-12, target_acc_se=0.5, min_windows=2)
    spec = PerplexitySpec("wikitext2", "gptq", seqlen=SEQ, max_tokens=SEQ * 12)
    suite = EvalSuite([spec, ZeroShotSpec("winogrande", limit=60)], tok, data_dir=data_dir,
                      cache_dir=default_cache_dir(), batch_size=4, sequential=seq)
    ref = suite.set_reference(base, progress=False)
    got = suite.run(other, progress=False)
    assert got["nwin_wikitext2"] == 12 and got["subset_wikitext2"] == 1.0
    assert ref["n_winogrande"] == 60 and got["n_winogrande"] == 20  # 10 x min_windows items, then SE <= 0.5
    assert got["subset_winogrande"] == pytest.approx(20 / 60)


def test_options_are_validated():
    assert sequential_from_config({"target_se": 0.01}).target_se == 0.01
    assert not sequential_from_config({}).active
    for bad in ({"target_se": 0}, {"target_se": "small"}, {"min_windows": 1}, {"order_seed": 1.5}):
        with pytest.raises(ValueError, match="eval\\."):
            sequential_from_config(bad)
