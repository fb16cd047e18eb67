"""Evaluation throughput, as ratios measured in one run (absolute times depend on the machine).

Sections (``--sections``, default all):

* ``gptq``: the gptq protocol vs a plain ``for window: model(x, labels=x)`` loop. Target >= 0.95x.
* ``reference``: the 16-bit reference pass (``set_reference``: stores the top-k log-probs, NLL and
  argmax per token, and evaluates everything) vs a later ``run`` with KL on. Target < 1.3x.
* ``zeroshot``: kscale's batched ``loglikelihood`` vs lm-evaluation-harness's ``HFLM.loglikelihood``
  on the same requests (LAMBADA/PIQA/HellaSwag items from the shared data) and the same model
  (saved with ``save_pretrained``, loaded by HFLM from disk), at lm-eval ``batch_size=1`` and at
  its best of a few batch sizes. Targets: >= 1.5x and >= 1.0x.
* ``rolling``: the same for ``loglikelihood_rolling`` on WikiText-2 documents (targets >= 1.5x
  and >= 1.05x), and both against the bare forward passes over the same windows.

Every section alternates its commands over ``--repeats`` (default 5) repeats and prints the
median of the per-repeat ratios with their min-max spread and the load average
(``benchmarks/timing.py``).

The model is a random-init OPT-shaped model (OPT vocabulary, 50272 entries; ``--layers``,
``--hidden``; the defaults are a 2-layer OPT-125m-width model so the run takes minutes on CPU).
Results of both libraries are also compared (max |delta log-likelihood|), so a fast wrong
answer cannot pass unnoticed.

    python benchmarks/eval_speed.py
    python benchmarks/eval_speed.py --layers 12 --sections reference,zeroshot
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from timing import DEFAULT_REPEATS, alternate, fmt, load, ratios, verdict


def matmul_flops(n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def build_model(args):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(num_hidden_layers=args.layers, hidden_size=args.hidden, word_embed_proj_dim=args.hidden,
                    ffn_dim=4 * args.hidden, num_attention_heads=max(1, args.hidden // 64),
                    max_position_embeddings=args.context)
    return OPTForCausalLM(cfg).eval()


def section_gptq(model, tok, args) -> None:
    from kscale.evaluate import EvalSuite, PerplexitySpec
    from kscale.paths import default_cache_dir

    spec = PerplexitySpec("wikitext2", "gptq", seqlen=args.seqlen, max_tokens=args.seqlen * args.windows, kl=False)
    suite = EvalSuite([spec], tok, seqlen_default=args.seqlen, cache_dir=default_cache_dir())
    suite.prepare()
    windows = suite._ppl[0].windows
    ntok = len(windows) * args.seqlen
    n_params = sum(p.numel() for p in model.parameters())

    def plain():
        with torch.no_grad():
            for w in windows:
                x = torch.as_tensor(w.ids[None], dtype=torch.long)
                model(x, labels=x)

    t = alternate({"plain": plain, "ours": lambda: suite.run(model, progress=False)}, args.repeats)
    speed = ratios(t["plain"], t["ours"])  # throughput ratio = time ratio inverted
    peak = matmul_flops()
    ours_tps = ntok / min(t["ours"])
    print(f"[gptq] {len(windows)} windows x {args.seqlen} tokens; {n_params / 1e6:.1f}M params")
    print(f"[gptq] gptq protocol = {fmt(speed)} the plain loop's tokens/s (target >= 0.95x: "
          f"{verdict(speed, 0.95)}; {load()})")
    print(f"[gptq] matmul rate {peak / 1e9:.1f} GFLOP/s; achieved {2 * n_params * ours_tps / 1e9:.1f} GFLOP/s "
          f"= {2 * n_params * ours_tps / peak:.0%}")


def section_reference(model, tok, args) -> None:
    from kscale.evaluate import EvalSuite, PerplexitySpec
    from kscale.paths import default_cache_dir

    spec = PerplexitySpec("wikitext2", "gptq", seqlen=args.seqlen, max_tokens=args.seqlen * args.windows,
                          kl=True, kl_top_k=args.kl_top_k)
    suite = EvalSuite([spec], tok, seqlen_default=args.seqlen, cache_dir=default_cache_dir(),
                      batch_size=args.batch_size)
    plain = EvalSuite([PerplexitySpec("wikitext2", "gptq", seqlen=args.seqlen,
                                      max_tokens=args.seqlen * args.windows, kl=False)],
                      tok, seqlen_default=args.seqlen, cache_dir=default_cache_dir(), batch_size=args.batch_size)
    t = alternate({"ref": lambda: suite.set_reference(model, progress=False),
                   "run": lambda: suite.run(model, progress=False),
                   "plain": lambda: plain.run(model, progress=False)}, args.repeats)
    on, off = ratios(t["ref"], t["run"]), ratios(t["ref"], t["plain"])
    print(f"[reference] {suite.last_tokens} tokens, KL on all (top-{args.kl_top_k} reference), vocab "
          f"{model.config.vocab_size}: reference / run(kl on) = {fmt(on)} (target < 1.3x: "
          f"{verdict(on, 1.3, higher_is_better=False)}); reference / run(kl off) = {fmt(off)}; {load()}")


def _zeroshot_requests(tok, n_lambada, n_piqa, n_hellaswag):
    from kscale.evaluate.zeroshot import load_task_items

    pairs = []
    for task, n in (("lambada", n_lambada), ("piqa", n_piqa), ("hellaswag", n_hellaswag)):
        for item in load_task_items(task, limit=n):
            pairs += [(r.context, r.continuation) for r in item.requests]
    return pairs


def _hflm(path, batch_size):
    from lm_eval.models.huggingface import HFLM

    # add_bos_token=False: encode as kscale does (no special tokens; lm-eval 0.4.13 otherwise uses the
    # tokenizer default, which prepends </s> for OPT)
    return HFLM(pretrained=path, backend="causal", batch_size=batch_size, device="cpu", dtype="float32",
                add_bos_token=False)


def _compare(name, times, ours_vals, lm_vals, n_tokens, targets) -> None:
    """``times``: per-repeat seconds of ``ours`` and of lm-eval at each batch size (``lm<bs>``),
    all from one :func:`alternate` run; lm-eval's best batch size is the one of least median time."""
    import statistics

    delta = max(abs(a - b) for a, b in zip(ours_vals, lm_vals))
    lm = {int(k[2:]): v for k, v in times.items() if k.startswith("lm")}
    best_bs = min(lm, key=lambda bs: statistics.median(lm[bs]))
    one, best = ratios(lm[1], times["ours"]), ratios(lm[best_bs], times["ours"])
    print(f"[{name}] {n_tokens} tokens; max |delta loglik| vs lm-eval = {delta:.2e}")
    print(f"[{name}] median s: kscale (auto) {statistics.median(times['ours']):.2f}; lm-eval by batch size: "
          + ", ".join(f"{k}: {statistics.median(v):.2f}" for k, v in lm.items()))
    print(f"[{name}] kscale throughput = {fmt(one)} lm-eval batch_size=1 (target >= {targets[0]}x: "
          f"{verdict(one, targets[0])}), {fmt(best)} lm-eval at its best batch_size={best_bs} "
          f"(target >= {targets[1]}x: {verdict(best, targets[1])}); {load()}")


def section_zeroshot(model, tok, path, args) -> None:
    from lm_eval.api.instance import Instance

    from kscale.evaluate import loglikelihood
    from kscale.evaluate.batching import ForwardStats
    from kscale.evaluate.zeroshot import encode_pair

    pairs = _zeroshot_requests(tok, args.lambada, args.piqa, args.hellaswag)
    reqs = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(pairs)]
    encoded = [encode_pair(tok, c, x) for c, x in pairs]
    stats = ForwardStats()
    ours_vals = [r[0] for r in loglikelihood(model, encoded, max_length=args.context, batch_size="auto",
                                             stats=stats)]
    commands = {"ours": lambda: loglikelihood(model, encoded, max_length=args.context, batch_size="auto")}
    lms = {bs: _hflm(path, bs) for bs in args.lm_batch_sizes}
    lm_vals = [r[0] for r in lms[1].loglikelihood(reqs, disable_tqdm=True)]
    for bs, lm in lms.items():
        commands[f"lm{bs}"] = lambda lm=lm: lm.loglikelihood(reqs, disable_tqdm=True)
    _compare("zeroshot", alternate(commands, args.repeats), ours_vals, lm_vals, stats.tokens, (1.5, 1.0))


def section_rolling(model, tok, path, args) -> None:
    from lm_eval.api.instance import Instance

    from kscale.data import load_corpus
    from kscale.evaluate import loglikelihood_rolling
    from kscale.evaluate.batching import ForwardStats
    from kscale.evaluate.zeroshot import prefix_token_id

    docs = list(load_corpus("wikitext2").documents[: args.docs])
    reqs = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    ids = [tok(d, add_special_tokens=False).input_ids for d in docs]
    kw = dict(max_length=args.context, prefix_token=prefix_token_id(tok), batch_size="auto")
    stats = ForwardStats()
    ours_vals = loglikelihood_rolling(model, ids, stats=stats, **kw)
    lms = {bs: _hflm(path, bs) for bs in args.lm_batch_sizes}
    lm_vals = lms[1].loglikelihood_rolling(reqs, disable_tqdm=True)
    # the floor: the model's own forward passes over the same windows, nothing scored. Every
    # position of a rolling window is a target, so no scorer can skip any of this work
    commands = {"ours": lambda: loglikelihood_rolling(model, ids, **kw),
                "floor": lambda: _forward_only(model, ids, args.context, kw["prefix_token"])}
    for bs, lm in lms.items():
        commands[f"lm{bs}"] = lambda lm=lm: lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    times = alternate(commands, args.repeats)
    _compare("rolling", {k: v for k, v in times.items() if k != "floor"}, ours_vals, lm_vals, stats.tokens,
             (1.5, 1.05))
    print(f"[rolling] against the forward passes alone (the floor): kscale = {fmt(ratios(times['ours'], times['floor']))}"
          f" it, lm-eval batch_size=1 = {fmt(ratios(times['lm1'], times['floor']))} it (no scorer can beat "
          f"lm-eval at batch_size=1 by more than its own ratio)")


def _forward_only(model, ids, context: int, prefix_token: int) -> None:
    """One ``model(window)`` per rolling window, logits computed and dropped."""
    import numpy as np

    from kscale.evaluate.perplexity import TokenStream, rolling_windows

    flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in ids])
    starts = np.concatenate([[0], np.cumsum([len(d) for d in ids])]).astype(np.int64)
    k = len(ids)
    stream = TokenStream(flat, np.ones(len(flat)), starts, np.ones(k, np.int64), np.ones(k, np.int64))
    with torch.inference_mode():
        for w in rolling_windows(stream, context, None, prefix_token):
            model(input_ids=torch.as_tensor(np.asarray(w.ids[:-1]))[None], use_cache=False).logits.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="gptq,reference,zeroshot,rolling")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--context", type=int, default=512, help="model positions (lm-eval's max_length)")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--kl-top-k", type=int, default=64)
    ap.add_argument("--batch-size", default="auto", help="kscale's batch_size for the reference section")
    ap.add_argument("--lambada", type=int, default=24)
    ap.add_argument("--piqa", type=int, default=12)
    ap.add_argument("--hellaswag", type=int, default=6)
    ap.add_argument("--docs", type=int, default=2, help="WikiText-2 documents for the rolling section")
    ap.add_argument("--lm-batch-sizes", default="1,4,16", help="lm-eval batch sizes to try (must include 1)")
    ap.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                    help="alternating repeats; figures are medians of per-repeat ratios (default %(default)s)")
    args = ap.parse_args()
    args.lm_batch_sizes = [int(b) for b in args.lm_batch_sizes.split(",")]
    if 1 not in args.lm_batch_sizes:
        ap.error("--lm-batch-sizes must include 1")
    args.batch_size = int(args.batch_size) if args.batch_size != "auto" else "auto"
    sections = args.sections.split(",")

    from kscale.models.tokenizers import opt_tokenizer

    model = build_model(args)
    tok = opt_tokenizer()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: random OPT shape, {args.layers} layers x {args.hidden}, vocab {model.config.vocab_size}, "
          f"{n_params / 1e6:.1f}M params, context {args.context}; torch threads {torch.get_num_threads()}")
    if "gptq" in sections:
        section_gptq(model, tok, args)
    if "reference" in sections:
        section_reference(model, tok, args)
    if "zeroshot" in sections or "rolling" in sections:
        with tempfile.TemporaryDirectory() as path:
            model.save_pretrained(path)
            tok.save_pretrained(path)
            if "zeroshot" in sections:
                section_zeroshot(model, tok, path, args)
            if "rolling" in sections:
                section_rolling(model, tok, path, args)


if __name__ == "__main__":
    main()
