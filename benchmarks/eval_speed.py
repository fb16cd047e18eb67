"""Tokens/s of the gptq protocol vs a plain ``for window: model(x, labels=x)`` loop (same run).

Random-init OPT-125m-shaped model (no download), WikiText-2 test tokens from the shared data.
Also reports the achieved FLOP rate (2 x params x tokens/s) as a fraction of a measured
fp32 matmul rate. Target: gptq protocol >= 0.95x the plain loop.

    python benchmarks/eval_speed.py                 # short default run (CPU, ~1-2 min)
    python benchmarks/eval_speed.py --windows 20 --seqlen 2048
"""
from __future__ import annotations

import argparse
import time

import torch


def matmul_flops(n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from transformers import OPTConfig, OPTForCausalLM

    from kscale.evaluate import EvalSuite, PerplexitySpec
    from kscale.models.tokenizers import opt_tokenizer

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(num_hidden_layers=args.layers, max_position_embeddings=2048)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    tok = opt_tokenizer()
    spec = PerplexitySpec("wikitext2", "gptq", seqlen=args.seqlen, max_tokens=args.seqlen * args.windows, kl=False)
    from kscale.paths import default_cache_dir

    suite = EvalSuite([spec], tok, seqlen_default=args.seqlen, cache_dir=default_cache_dir())
    suite.prepare()
    windows = suite._ppl[0].windows
    ntok = len(windows) * args.seqlen

    def plain():
        with torch.no_grad():
            for w in windows:
                x = torch.as_tensor(w.ids[None], dtype=torch.long)
                model(x, labels=x)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    plain()  # warm-up
    # alternate and keep the best of each, so load from other processes hurts both alike
    plain_s, ours_s = float("inf"), float("inf")
    for _ in range(args.repeats):
        plain_s = min(plain_s, timed(plain))
        ours_s = min(ours_s, timed(lambda: suite.run(model, progress=False)))
    peak = matmul_flops()
    ours_tps, plain_tps = ntok / ours_s, ntok / plain_s
    print(f"model: OPT-125m shape, {n_params / 1e6:.1f}M params, {args.layers} layers; "
          f"{len(windows)} windows x {args.seqlen} tokens")
    print(f"plain loop:     {plain_tps:8.1f} tokens/s")
    print(f"gptq protocol:  {ours_tps:8.1f} tokens/s  ({ours_tps / plain_tps:.2f}x plain; target >= 0.95x)")
    print(f"matmul rate:    {peak / 1e9:8.1f} GFLOP/s; achieved {2 * n_params * ours_tps / 1e9:.1f} GFLOP/s "
          f"= {2 * n_params * ours_tps / peak:.0%}")


if __name__ == "__main__":
    main()
