"""Zero-shot scoring on hand-computed items (bigram model), request building and aggregation."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kscale.data.tasks import PiqaDoc, WinoGrandeDoc
from kscale.evaluate import EvalSuite, ZeroShotSpec
from kscale.evaluate.zeroshot import TASKS, encode_pair, score_task
from kscale.models.tokenizers import gpt2_tokenizer


class BigramLM(torch.nn.Module):
    """logits[t] = table[ids[t]]: log p(next | prev) is a table lookup we can do by hand."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g) * 3)
        self.config = SimpleNamespace(max_position_embeddings=1024)

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])


class SmallVocabTok:
    """Wrap GPT-2's tokenizer, folding ids into a small vocab so the bigram table stays small."""

    def __init__(self, tok, vocab):
        self.tok, self.vocab = tok, vocab
        self.bos_token_id = self.eos_token_id = 50256 % vocab

    def encode(self, text, add_special_tokens=False):
        return [i % self.vocab for i in self.tok.encode(text, add_special_tokens=False)]


@pytest.fixture(scope="module")
def tok(data_dir):
    return gpt2_tokenizer(data_dir)


def test_encode_pair_moves_trailing_space(tok):
    ctx, cont = encode_pair(tok, "Question: x\nAnswer: ", "yes")
    assert tok.decode(ctx) == "Question: x\nAnswer:" and tok.decode(cont) == " yes"
    ctx, cont = encode_pair(tok, "", "Hello world")
    assert ctx == [50256] and cont == [15496, 995]


def test_piqa_and_winogrande_by_hand(tok):
    V = 97
    stok = SmallVocabTok(tok, V)
    model = BigramLM(V)
    logp = torch.log_softmax(model.table.detach(), -1).numpy()

    def ll(context, continuation):  # by hand: sum of bigram log-probs over the continuation tokens
        whole = stok.encode(context + continuation)
        n_ctx = len(stok.encode(context))
        return sum(logp[whole[i - 1], whole[i]] for i in range(n_ctx, len(whole)))

    docs = [PiqaDoc("Open a jar", "twist the lid", "hit it with a very long hammer", 0),
            PiqaDoc("Boil water", "use a kettle", "freeze it", 1)]
    task = TASKS.get("piqa")
    items = task.build(docs)
    from kscale.evaluate.zeroshot import loglikelihood

    enc = [encode_pair(stok, r.context, r.continuation) for it in items for r in it.requests]
    res = loglikelihood(model, enc, max_length=1024)
    expected = [ll(f"Question: {d.goal}\nAnswer:", " " + s) for d in docs for s in (d.sol1, d.sol2)]
    np.testing.assert_allclose([r[0] for r in res], expected, rtol=1e-5)
    m = score_task(task, items, res)
    acc = np.mean([np.argmax(expected[2 * i : 2 * i + 2]) == d.label for i, d in enumerate(docs)])
    lens = [[len(d.sol1), len(d.sol2)] for d in docs]
    acc_norm = np.mean([np.argmax(np.array(expected[2 * i : 2 * i + 2]) / lens[i]) == d.label
                        for i, d in enumerate(docs)])
    assert m["acc_piqa"] == acc and m["acc_norm_piqa"] == acc_norm

    wg = TASKS.get("winogrande").build([WinoGrandeDoc("Sarah beat Maria so _ won the cup.", "Sarah", "Maria", 1)])
    assert [r.context for r in wg[0].requests] == ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"]
    assert {r.continuation for r in wg[0].requests} == {" won the cup."} and wg[0].gold == 0


def test_score_task_acc_norm_and_mean():
    task = TASKS.get("hellaswag")
    items = task.build([SimpleNamespace(query="q", endings=("abcde", "a" * 20), label=1)] * 2)
    # lls -10 vs -12: acc picks 0 (wrong); per char -2 vs -0.6: acc_norm picks 1 (right).
    m = score_task(task, items, [(-10.0, False), (-12.0, False)] * 2)
    assert m["acc_hellaswag"] == 0.0 and m["acc_norm_hellaswag"] == 1.0
    lam = score_task(TASKS.get("lambada"), TASKS.get("lambada").build(
        [SimpleNamespace(context="a", target=" b")] * 4), [(-1.0, True), (-2.0, False), (-3.0, True), (-2.0, True)])
    assert lam["acc_lambada"] == 0.75 and lam["ppl_lambada"] == pytest.approx(math.exp(2.0))
    assert lam["acc_stderr_lambada"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))


def test_suite_zeroshot_lambada_greedy(tok, data_dir):
    # A model that always predicts token id t has lambada acc 1 exactly on passages whose target
    # is the single token t; check the suite reports acc, ppl and acc_mean consistently.
    V = 50257

    class Const(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = SimpleNamespace(max_position_embeddings=2048)

        def forward(self, input_ids, use_cache=False):
            logits = torch.zeros(*input_ids.shape, V)
            logits[..., 262] = 10.0  # " the"
            return SimpleNamespace(logits=logits + self.w)

    suite = EvalSuite([ZeroShotSpec("lambada", limit=12), ZeroShotSpec("winogrande", limit=4)], tok, data_dir=data_dir)
    m = suite.run(Const(), progress=False)
    from kscale.data import load_task_data

    docs = load_task_data("lambada", data_dir=data_dir)[:12]
    exp_acc = np.mean([tok.encode(d.target) == [262] for d in docs])
    assert m["acc_lambada"] == exp_acc
    lp_hit = 10 - math.log(math.exp(10) + V - 1)
    lp_miss = -math.log(math.exp(10) + V - 1)
    exp_ll = [sum(lp_hit if t == 262 else lp_miss for t in tok.encode(d.target)) for d in docs]
    assert m["ppl_lambada"] == pytest.approx(math.exp(-np.mean(exp_ll)), rel=1e-4)
    assert m["acc_mean"] == pytest.approx((m["acc_lambada"] + m["acc_winogrande"]) / 2)
    with pytest.raises(ValueError, match="Did you mean 'lambada'"):
        ZeroShotSpec("lambda")
