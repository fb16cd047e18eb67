"""Command line for the toy family.

    python -m kscale.toy train [--sizes L1-d8 L2-d24] [--architecture opt] [--tokens-per-param 20]
                               [--device cuda] [--text-path FILE] [--seed 0] [--snapshots 6] [--no-progress]
    python -m kscale.toy entropy [--vocab-size 128 ...]
    python -m kscale.toy sample [--n 50]

``train`` fills the cache that ``python run_sweep.py`` reads (same options -> same directory)
and prints one line per size: parameters, training time, final loss and the entropy rate, then
the revisions (checkpoints over training) saved for every size.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np


def _options(args: argparse.Namespace) -> dict:
    opts: dict = {"architecture": args.architecture, "seed": args.seed, "device": args.device}
    if args.tokens_per_param is not None:
        opts["tokens_per_param"] = args.tokens_per_param
    if args.text_path:
        opts["text_path"] = args.text_path
    lang = {k: v for k, v in (("vocab_size", args.vocab_size), ("seed", args.language_seed)) if v is not None}
    if lang:
        opts["language"] = lang
    opts["progress"] = not args.no_progress
    if args.snapshots is not None:
        opts["snapshots"] = args.snapshots
    opts["num_threads"] = args.threads
    return opts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kscale.toy", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["train", "entropy", "sample"])
    parser.add_argument("--sizes", nargs="*", default=None, help="size labels (default: the whole ladder)")
    parser.add_argument("--architecture", default="gpt2", help="gpt2, opt or llama")
    parser.add_argument("--tokens-per-param", type=float, default=None, help="token budget per parameter")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    parser.add_argument("--text-path", default=None, help="train on this text file instead of the language")
    parser.add_argument("--vocab-size", type=int, default=None, help="synthetic language vocabulary size")
    parser.add_argument("--language-seed", type=int, default=None, help="seed of the language's structure")
    parser.add_argument("--n", type=int, default=40, help="words to print for `sample`")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads while training (default: 1 for small rungs, all for large)")
    parser.add_argument("--snapshots", type=int, default=None,
                        help="checkpoints per size over training, the final included (default 6: 1/32 .. 1 of the budget)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from kscale.toy import PROVIDER, ToyOptions, data_source

    options = _options(args)
    opts = ToyOptions.from_mapping(options)
    source = data_source(opts)
    if args.command == "entropy":
        lang = getattr(source, "language", None)
        if lang is None:
            print("text files have no known entropy rate")
            return 1
        print(json.dumps({
            "entropy_rate_nats": lang.entropy_rate, "bigram_entropy_nats": lang.bigram_entropy,
            "unigram_entropy_nats": lang.unigram_entropy, "log_vocab_nats": float(np.log(lang.spec.vocab_size)),
            "language": lang.spec.to_dict(),
        }, indent=2))
        return 0
    if args.command == "sample":
        from kscale.toy import load_toy_corpus

        corpus = load_toy_corpus(n_tokens=args.n, **options)
        print(" ".join(corpus.rows))
        return 0
    revisions = PROVIDER.revisions(options)
    paths = PROVIDER.ensure(args.sizes, options, revisions=revisions)
    print(f"{'size':8s} {'n_params':>9s} {'tokens':>10s} {'train_s':>8s} {'loss':>7s}  entropy rate {source.entropy_rate}")
    for size, path in paths.items():
        stats = json.loads((path / "train_stats.json").read_text())
        print(f"{size:8s} {stats['n_params']:9d} {stats['n_tokens']:10d} {stats['train_s']:8.1f} "
              f"{stats['final_loss']:7.4f}  {path}")
    print(f"revisions (model.revisions=[...]; folders <size>/revisions/<name>): {', '.join(revisions)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
