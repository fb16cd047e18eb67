"""kscale's zero-shot and rolling-perplexity scoring, request by request, against lm-evaluation-harness.

kscale re-implements lm-eval's prompts (``kscale/evaluate/zeroshot.py``), its ``_encode_pair``
tokenization, its left truncation, its ``loglikelihood_rolling`` windows and its aggregates.
Here lm-eval itself is the reference: its own task YAMLs (prompts, ``process_docs``,
``process_results``, metrics) are loaded from the installed package, pointed at the shared
data through the ``json`` dataset builder (offline), and run through its ``evaluate`` loop
with its Hugging Face backend ``HFLM``. kscale scores the same documents with the same
weights; every request's (context, continuation) strings, tokens and log-likelihood
(1e-5), every greedy flag and every per-document acc / acc_norm flag must agree, at kscale
batch size 1 and 8 (lm-eval at 1).

Three tiny random families cover the tokenizer cases: GPT-2 (GPT-2 BPE), Llama with
GPT-NeoX-20B's tokenizer (Pythia's; BOS = EOS = ``<|endoftext|>``) and OPT, whose tokenizer
prepends ``</s>``. kscale encodes requests without special tokens, as lm-eval's ``HFLM``
did when the paper's numbers were made; lm-eval 0.4.13 instead follows the tokenizer's
default unless ``add_bos_token`` is given, so the OPT case runs HFLM with
``add_bos_token=False`` (:data:`HFLM_KW`), which is the protocol kscale records.

Weights use a large init (std 0.5) so per-token log-probabilities spread over several nats:
an off-by-one position or a lost space moves a request's log-likelihood by far more than
the tolerance. WikiText documents are kscale's split of the raw file into articles (tested
in tests/data); lm-eval applies its own detokenizer and rolling windows to them.
"""
from __future__ import annotations

import bz2
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lm_eval
from lm_eval.api.task import ConfigurableTask
from lm_eval.evaluator import evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks._yaml_loader import load_yaml

from kscale.data.corpus import load_corpus
from kscale.evaluate import PROTOCOLS, EvalSuite, PerplexitySpec, forward_scored, perplexity, tokenize_corpus
from kscale.evaluate.zeroshot import TASKS, encode_pair, load_task_items, loglikelihood, prefix_token_id, score_task
from kscale.models.loading import model_context
from kscale.models.tokenizers import gpt2_tokenizer, neox_tokenizer, opt_tokenizer

pytestmark = pytest.mark.slow  # importing lm_eval alone takes seconds

N_DOCS = 20  # documents per zero-shot task
N_PAGES = 1  # WikiText articles (the first has 1299 GPT-2 tokens: 14 windows)
CONTEXT = 96  # model positions: several LAMBADA passages (up to 116 tokens) get left-truncated
KSCALE_BATCHES = (1, 8) if "batch_size" in inspect.signature(loglikelihood).parameters else (1,)
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
HFLM_KW = {"gpt2": {}, "llama": {}, "opt": {"add_bos_token": False}}


# ---------------------------------------------------------------------------- tiny models

def _gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=CONTEXT, vocab_size=len(tok),
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      initializer_range=0.5))


def _llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=CONTEXT, vocab_size=len(tok),
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id, initializer_range=0.5))


def _opt(tok):
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                                    word_embed_proj_dim=32, max_position_embeddings=CONTEXT, vocab_size=50272,
                                    bos_token_id=2, eos_token_id=2, pad_token_id=1, init_std=0.5))


FAMILIES = {"gpt2": (gpt2_tokenizer, _gpt2), "llama": (neox_tokenizer, _llama), "opt": (opt_tokenizer, _opt)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory, data_dir):
    """(name, HFLM, kscale tokenizer): a random model saved to disk and loaded by lm-eval."""
    name = request.param
    make_tok, make_model = FAMILIES[name]
    tok = make_tok(data_dir)
    torch.manual_seed(0)
    model = make_model(tok).eval()
    folder = tmp_path_factory.mktemp(f"tiny-{name}")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    lm = HFLM(pretrained=str(folder), device="cpu", batch_size=1, dtype="float32", **HFLM_KW[name])
    assert lm.max_length == model_context(lm.model) == CONTEXT
    assert lm.prefix_token_id == prefix_token_id(tok)
    return name, lm, tok


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- lm-eval tasks on local files

def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _lines(path: Path) -> list[str]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def _hub_rows(task: str, data_dir: Path) -> list[dict]:
    """The first documents of the shared files in the schema of the hub dataset lm-eval's YAML names.

    Read straight from the files (not through kscale's loaders) so the two sides share only the data.
    """
    if task == "lambada":
        return [json.loads(x) for x in _lines(data_dir / "lambada/lambada_test.jsonl")[:N_DOCS]]
    if task == "piqa":
        recs = [json.loads(x) for x in _lines(data_dir / "piqa/valid.jsonl")[:N_DOCS]]
        labels = [int(x) for x in _lines(data_dir / "piqa/valid-labels.lst")[:N_DOCS]]
        return [{**r, "label": lab} for r, lab in zip(recs, labels)]
    if task == "winogrande":
        return [json.loads(x) for x in _lines(data_dir / "winogrande/dev.jsonl")[:N_DOCS]]
    if task == "hellaswag":
        # The local file holds lm-eval's query ("activity_label: ctx", already cleaned); lm-eval's
        # process_docs rebuilds it as preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize()).
        lines = _lines(data_dir / "hellaswag/hellaswag_val_full.txt.bz2")[: 6 * N_DOCS]
        rows = []
        for i in range(0, len(lines), 6):
            label, ctx = lines[i].split(": ", 1)
            rows.append({"activity_label": label, "ctx_a": ctx, "ctx_b": "", "endings": lines[i + 2 : i + 6],
                         "label": lines[i + 1]})
        return rows
    raise KeyError(task)


YAMLS = {"lambada": ("lambada/lambada_openai.yaml", "test"), "piqa": ("piqa/piqa.yaml", "validation"),
         "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
         "winogrande": ("winogrande/default.yaml", "validation"), "wikitext": ("wikitext/wikitext.yaml", "test")}


def _lm_eval_task(name: str, rows: list[dict], tmp: Path) -> ConfigurableTask:
    """lm-eval's own task definition, with its dataset swapped for a local JSON file."""
    yaml_file, split = YAMLS[name]
    cfg = load_yaml(LM_EVAL_TASKS / yaml_file)
    for key in ("tag", "group"):
        cfg.pop(key, None)
    data = _write_jsonl(tmp / f"{name}.jsonl", rows)
    cfg.update(dataset_path="json", dataset_name=None, training_split=None, validation_split=None, test_split=None,
               dataset_kwargs={"data_files": {split: str(data)}, "cache_dir": str(tmp / "hf-datasets")})
    cfg[f"{split}_split"] = split
    return ConfigurableTask(config=cfg)


def _run_lm_eval(lm: HFLM, task: ConfigurableTask) -> tuple[dict, list[dict]]:
    out = evaluate(lm=lm, task_dict={"tasks": {task.config.task: task}, "groups": {}}, log_samples=True,
                   bootstrap_iters=0)
    name = task.config.task
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return out["results"][name], samples


# ---------------------------------------------------------------------------- zero-shot

@pytest.mark.parametrize("task_name", ["lambada", "piqa", "hellaswag", "winogrande"])
def test_zeroshot_requests_match_lm_eval(family, task_name, data_dir, tmp_path):
    fam, lm, tok = family
    task = TASKS.get(task_name)
    lm_task = _lm_eval_task(task_name, _hub_rows(task_name, data_dir), tmp_path)
    agg, samples = _run_lm_eval(lm, lm_task)
    assert len(samples) == N_DOCS

    items = load_task_items(task_name, data_dir=data_dir, source="local", limit=N_DOCS)
    # 1. Prompts: the same (context, continuation) strings, request by request.
    ours = [(r.context, r.continuation) for it in items for r in it.requests]
    theirs = [tuple(a) for s in samples for a in s["arguments"]]
    assert ours == theirs
    if task.kind == "choice":
        assert [it.gold for it in items] == [int(s["target"]) for s in samples]
    if task.kind == "partial":  # WinoGrande: lm-eval's gold is doc_to_text (the filled-in context's index)
        assert [it.gold for it in items] == [lm_task.doc_to_text(s["doc"]) for s in samples]
    # 2. Tokens: kscale's encode_pair is lm-eval's _encode_pair.
    encoded = [encode_pair(tok, c, x) for c, x in ours]
    assert encoded == [tuple(map(list, lm._encode_pair(c, x))) for c, x in ours]
    if task_name == "lambada":  # some passages exceed the context: left truncation is exercised
        assert any(len(c) + len(x) > CONTEXT + 1 for c, x in encoded)

    ref = [tuple(r) for s in samples for r in s["filtered_resps"]]
    ref_ll = np.array([r[0] for r in ref])
    assert np.ptp(ref_ll) > 1.0  # the requests are told apart
    for bs in KSCALE_BATCHES:
        kw = {"batch_size": bs} if bs != 1 else {}
        res = loglikelihood(lm.model, encoded, max_length=model_context(lm.model), **kw)
        # 3. Log-likelihoods and greedy flags, request by request.
        got = np.array([r[0] for r in res])
        bad = np.flatnonzero(~np.isclose(got, ref_ll, rtol=1e-5, atol=1e-5))
        assert not len(bad), (f"{fam}/{task_name} batch_size={bs}: request {bad[0]} {ours[bad[0]]!r}: "
                              f"kscale {got[bad[0]]!r} vs lm-eval {ref_ll[bad[0]]!r}")
        assert [r[1] for r in res] == [bool(r[1]) for r in ref]
        # 4. Per-document metric flags, scored by kscale's score_task on each item alone.
        pos = 0
        for it, s in zip(items, samples):
            k = len(it.requests)
            m = score_task(task, [it], res[pos : pos + k])
            pos += k
            assert m[f"acc_{task_name}"] == s["acc"], (fam, task_name, bs, s["doc_id"])
            if task.kind == "choice":
                assert m[f"acc_norm_{task_name}"] == s["acc_norm"], (fam, task_name, bs, s["doc_id"])
        # 5. Aggregates.
        m = score_task(task, items, res)
        assert m[f"acc_{task_name}"] == pytest.approx(agg["acc,none"], abs=1e-12)
        if task.kind == "choice":
            assert m[f"acc_norm_{task_name}"] == pytest.approx(agg["acc_norm,none"], abs=1e-12)
        if task.kind == "lambada":
            assert m["ppl_lambada"] == pytest.approx(agg["perplexity,none"], rel=1e-5)


def test_lm_eval_default_prepends_bos_for_opt(family, data_dir):
    """lm-eval 0.4.13's *default* HFLM (``add_bos_token=None``) encodes with the tokenizer's special
    tokens, so for OPT every context (and every rolling document) starts with ``</s>``, which
    kscale (and lm-eval's older HFLM) leave out. Pin the difference exactly, so a change on
    either side shows up here: the default's contexts are kscale's with one ``</s>`` in front.
    Tokenizers that add nothing (GPT-2, GPT-NeoX) must agree with the default as they are."""
    fam, lm, tok = family
    default = HFLM(pretrained=lm.pretrained, device="cpu", batch_size=1)  # add_bos_token=None
    items = load_task_items("piqa", data_dir=data_dir, source="local", limit=4)
    for req in (r for it in items for r in it.requests):
        ctx, cont = encode_pair(tok, req.context, req.continuation)
        theirs = tuple(map(list, default._encode_pair(req.context, req.continuation)))
        if fam == "opt":
            assert theirs == ([tok.bos_token_id] + ctx, cont)
        else:
            assert theirs == (ctx, cont)


# ---------------------------------------------------------------------------- rolling (WikiText)

def test_rolling_wikitext_matches_lm_eval(family, data_dir, tmp_path):
    fam, lm, tok = family
    corpus = load_corpus("wikitext2", data_dir=data_dir, source="local")
    pages = list(corpus.documents[:N_PAGES])
    agg, samples = _run_lm_eval(lm, _lm_eval_task("wikitext", [{"page": p} for p in pages], tmp_path))
    assert len(samples) == N_PAGES
    ref = np.array([float(np.ravel(s["filtered_resps"])[0]) for s in samples])

    proto = PROTOCOLS.get("rolling")
    cache = tmp_path / "kscale-cache"  # the suite below reuses this tokenization
    stream = tokenize_corpus(tok, corpus, proto, cache_dir=cache)
    docs = [stream.doc(d) for d in range(N_PAGES)]
    # Requests: lm-eval tokenizes its detokenized page as kscale's stream does.
    assert [d.tolist() for d in docs] == [lm.tok_encode(s["arguments"][0][0]) for s in samples]
    windows = [w for w in proto.make_windows(stream, CONTEXT, None, prefix_token_id(tok)) if w.doc < N_PAGES]
    assert len(windows) >= 4 * N_PAGES and len(windows[-1].ids) == CONTEXT + 1  # a full-context last window
    per_doc = np.zeros(N_PAGES)
    for i, logits, targets in forward_scored(lm.model, windows, batch_size=1):
        per_doc[windows[i].doc] += float(torch.log_softmax(logits, -1).gather(1, targets[:, None]).double().sum())
    np.testing.assert_allclose(per_doc, ref, rtol=1e-5, err_msg=f"{fam}: per-document rolling loglik")
    if hasattr(perplexity, "loglikelihood_rolling"):  # kscale's batched counterpart of lm-eval's call
        got = perplexity.loglikelihood_rolling(lm.model, docs, max_length=CONTEXT, prefix_token=prefix_token_id(tok),
                                               batch_size=8)
        np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=f"{fam}: loglikelihood_rolling, batch 8")

    # Aggregates, through the suite a sweep runs (batched windows).
    spec = PerplexitySpec("wikitext2", protocol="rolling", seqlen=CONTEXT, max_tokens=int(stream.doc_starts[N_PAGES]),
                          kl=False)
    m = EvalSuite([spec], tok, data_dir=data_dir, cache_dir=cache, source="local", batch_size=8).run(
        lm.model, progress=False)
    assert m["nwin_wikitext2"] == len(windows)
    assert m["word_ppl_wikitext2"] == pytest.approx(agg["word_perplexity,none"], rel=1e-5)
    assert m["byte_ppl_wikitext2"] == pytest.approx(agg["byte_perplexity,none"], rel=1e-5)
    assert m["bpb_wikitext2"] == pytest.approx(agg["bits_per_byte,none"], rel=1e-5)
