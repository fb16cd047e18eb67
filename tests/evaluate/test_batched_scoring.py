"""Batched (length-sorted, right-padded) scoring equals one-request-per-forward scoring.

The reference here is written independently of kscale: one unpadded forward per request with
full logits, ``log_softmax`` and a slice at the continuation, as lm-eval's ``HFLM`` does at
``batch_size=1``; rolling documents use lm-eval's window rule written out by hand.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kscale.evaluate import loglikelihood, loglikelihood_rolling
from kscale.evaluate.batching import BatchSize, ForwardStats, largest_fitting, plan_batches, resolve_batch_size

V, CTX = 101, 48


def _gpt2():  # no pad token; learned absolute positions
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=CTX, vocab_size=V,
                                      bos_token_id=0, eos_token_id=0)).eval()


def _llama():  # pad token set; rotary positions
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=CTX, vocab_size=V, pad_token_id=7)
    return LlamaForCausalLM(cfg).eval()


def _opt():  # pad token 1 and position ids derived from the attention mask
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(2)
    cfg = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=CTX, vocab_size=V, word_embed_proj_dim=32, bos_token_id=2, eos_token_id=2)
    return OPTForCausalLM(cfg).eval()


def _reference(model, ctx, cont, max_length):
    full = (list(ctx) + list(cont))[-(max_length + 1):]
    with torch.no_grad():
        logits = model(torch.tensor([full[:-1]])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)[len(full) - 1 - len(cont):]
    target = torch.tensor(cont)
    return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


def _requests(model, rng):
    """Ragged requests: shared contexts (multiple choice), contexts longer than max_length (left
    truncation), and greedy continuations (so the greedy flag is True for some)."""
    out = []
    for _ in range(8):
        ctx = [int(t) for t in rng.integers(0, V, size=int(rng.integers(1, 70)))]
        for _ in range(int(rng.integers(1, 4))):  # 1-3 choices share the context
            out.append((ctx, [int(t) for t in rng.integers(0, V, size=int(rng.integers(1, 7)))]))
        with torch.no_grad():  # a greedy continuation of 1-4 tokens
            seq = list(ctx[-(CTX - 5):])
            for _ in range(int(rng.integers(1, 5))):
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        out.append((ctx, seq[len(ctx[-(CTX - 5):]):]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("make", [_gpt2, _llama, _opt])
def test_batched_loglikelihood_equals_unbatched(make):
    model = make()
    reqs = _requests(model, np.random.default_rng(0))
    ref = [_reference(model, c, x, CTX) for c, x in reqs]
    assert 0 < sum(g for _, g in ref) < len(ref)  # both flags occur
    for bs in (1, 5, "auto"):
        stats = ForwardStats()
        got = loglikelihood(model, reqs, max_length=CTX, batch_size=bs, stats=stats)
        np.testing.assert_allclose([g[0] for g in got], [r[0] for r in ref], rtol=1e-5, atol=1e-5)
        assert [g[1] for g in got] == [r[1] for r in ref]
        # every real input token is forwarded once, whatever the batching
        assert stats.tokens == sum(min(len(c) + len(x), CTX + 1) - 1 for c, x in reqs)
        if bs != 1:
            assert stats.forwards < len(reqs) and stats.padded > 0


def _lm_eval_rolling_ll(model, doc, prefix, max_len):
    """lm-eval rolling windows (context_len=1, disjoint) scored one window per forward."""
    first = min(max_len, len(doc))
    pairs = [([prefix] + doc[: first - 1], doc[:first])]
    done = first
    while done < len(doc):
        n = min(len(doc) - done, max_len)
        end = done + n
        pairs.append((doc[end - max_len - 1 : end - 1], doc[end - n : end]))
        done = end
    total = 0.0
    for ctx, cont in pairs:
        ctx = ctx[: len(ctx) - (len(cont) - 1)]
        total += _reference(model, ctx, cont, max_len)[0]
    return total


@pytest.mark.parametrize("make", [_gpt2, _opt])
def test_rolling_batched_equals_lm_eval_windows(make):
    model = make()
    rng = np.random.default_rng(3)
    docs = [[int(t) for t in rng.integers(0, V, size=n)] for n in (5, 48, 49, 130, 17)]
    ref = [_lm_eval_rolling_ll(model, d, 50, CTX) for d in docs]
    for bs in (1, 4):
        got = loglikelihood_rolling(model, docs, max_length=CTX, prefix_token=50, batch_size=bs)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_plan_batches_sorted_and_bounded():
    lengths = [5, 30, 7, 30, 12, 1, 29]
    batches = plan_batches(lengths, BatchSize(3))
    assert [i for b in batches for i in b] == [1, 3, 6, 4, 2, 0, 5]  # longest first, stable
    assert [len(b) for b in batches] == [3, 3, 1]
    # token budget: rows = budget // longest length in the batch
    batches = plan_batches(lengths, BatchSize(1, tokens=60))
    assert [len(b) for b in batches] == [2, 2, 3]  # 60//30, 60//29, then 60//7 takes the rest
    # scored-position budget (CPU auto): long windows that score every position go one by one
    scored = [5, 30, 1, 30, 12, 1, 2]
    batches = plan_batches(lengths, BatchSize(1, tokens=60, positions=40), scored)
    assert [len(b) for b in batches] == [1, 1, 2, 3]  # 40//30, 40//30, 60//29 (40//2 allows 20), rest


def test_auto_batch_size_cpu_and_probe():
    model = _gpt2()
    bs = resolve_batch_size(model, "auto", 512)
    assert (bs.size, bs.tokens) == (4, 2048)
    vocab = model.get_output_embeddings().weight.shape[0]
    assert bs.positions == (1 << 25) // vocab  # the logits budget, in positions of this vocabulary
    assert resolve_batch_size(model, 5, 512) == BatchSize(5)
    with pytest.raises(ValueError, match="positive int or 'auto'"):
        resolve_batch_size(model, 0, 512)
    tried = []

    def attempt(rows):  # out of memory above 10 rows: halving from 64 lands on 8
        tried.append(rows)
        if rows > 10:
            raise torch.OutOfMemoryError("fake")

    assert largest_fitting(attempt, 64) == 8 and tried == [64, 32, 16, 8]
    with pytest.raises(torch.OutOfMemoryError):
        largest_fitting(lambda r: (_ for _ in ()).throw(torch.OutOfMemoryError("x")), 4)
