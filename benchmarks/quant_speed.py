"""Fake-quantization speed: kscale kernels vs the memory-bound floor and bitsandbytes (issue 2 §3).

Fake-quantizes a 4096x4096 fp32 tensor (blocksize 64) with int4, nf4, float4, int8, dynamic8 and
prints the time of each and its ratio to ``w.clone()`` (the memory-bound floor) and to
bitsandbytes' CPU ``quantize_4bit`` + ``dequantize_4bit`` (nf4), all measured in this run.
Targets: 4-bit types within 5x of the floor and >= 8x faster than bitsandbytes; 8-bit within 10x.

    python benchmarks/quant_speed.py [--size 4096] [--repeats 5] [--kernel auto|eager|compiled]
"""
from __future__ import annotations

import argparse
import time

import torch

from kscale.quant import QuantSpec, fake_quantize, set_kernel


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation for the fused kernels)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def bnb_nf4(w: torch.Tensor):
    try:
        import bitsandbytes.functional as F

        def run():
            q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
            return F.dequantize_4bit(q, state)

        run()
        return run, None
    except Exception as err:  # report why instead of a ratio
        return None, f"{type(err).__name__}: {err}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kernel", default="auto", choices=["auto", "eager", "compiled"])
    args = ap.parse_args()
    set_kernel(args.kernel)
    torch.manual_seed(0)
    w = torch.randn(args.size, args.size)
    floor = best_ms(lambda: w.clone(), args.repeats)
    bnb_run, bnb_err = bnb_nf4(w)
    bnb = best_ms(bnb_run, args.repeats) if bnb_run else None
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, tensor {args.size}x{args.size} fp32, "
          f"kernel={args.kernel}")
    print(f"{'case':<12}{'ms':>10}{'x clone':>10}{'bnb/x':>10}  target")
    print(f"{'clone':<12}{floor:>10.1f}{1.0:>10.2f}")
    if bnb is not None:
        print(f"{'bnb nf4':<12}{bnb:>10.1f}{bnb / floor:>10.2f}")
    else:
        print(f"bnb nf4: unavailable ({bnb_err})")
    cases = [("int4", QuantSpec(4, "int")), ("nf4", QuantSpec(4, "nf")), ("float4", QuantSpec(4, "float")),
             ("int8", QuantSpec(8, "int")), ("dynamic8", QuantSpec(8, "dynamic"))]
    for name, spec in cases:
        ms = best_ms(lambda: fake_quantize(w, spec), args.repeats)
        target = 5 if spec.bits == 4 else 10
        speedup = f"{bnb / ms:>10.1f}" if bnb is not None else f"{'n/a':>10}"
        ok = ms / floor <= target and (spec.bits != 4 or bnb is None or bnb / ms >= 8)
        print(f"{name:<12}{ms:>10.1f}{ms / floor:>10.2f}{speedup}  <= {target}x floor"
              f"{', >= 8x bnb' if spec.bits == 4 else ''}: {'ok' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
