"""Fake-quantization speed: kscale's in-place kernels vs the memory floor and bitsandbytes (issue 13 §2).

Fake-quantizes a 4096x4096 fp32 tensor (blocksize 64) in place (``fake_quantize_``, what a sweep
does to a loaded model's weights) with int4, nf4, float4, int8, dynamic8, and prints the time of
each and its ratio to ``out.copy_(w)`` into a warm buffer (timed alternately with it, see
:func:`paired_ms`): the memory-bound floor, one read and one write of the tensor. (``w.clone()``
is no floor: it also pays page faults on fresh memory, ~5-7x the copy here; it is printed for
reference.) Also bitsandbytes' CPU ``quantize_4bit`` + ``dequantize_4bit`` (nf4), and the first
call of each kernel, which compiles it (0 when an earlier case already built the same graph,
~1 s when inductor's on-disk cache has it). All in one run, for each engine: the numba kernels
(float32 weights) and the torch.compile ones (what fp16/bf16 weights use; run here on float32).
Targets (numba, the float32 path CPU sweeps take): 4-bit types <= 3x the floor, 8-bit <= 6x;
4-bit >= 8x faster than bitsandbytes.

    python benchmarks/quant_speed.py [--size 4096] [--repeats 7] [--kernel auto|eager|compiled] [--section all|blockwise|mx]

``--section mx`` times only the microscaling types (:func:`mx_section`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from kscale.quant import _fast
from kscale.quant import QuantSpec, fake_quantize, fake_quantize_, set_kernel, take_compile_seconds

CASES = [("int4", QuantSpec(4, "int")), ("nf4", QuantSpec(4, "nf")), ("float4", QuantSpec(4, "float")),
         ("int8", QuantSpec(8, "int")), ("dynamic8", QuantSpec(8, "dynamic"))]


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def paired_ms(w: torch.Tensor, spec: QuantSpec, repeats: int) -> tuple[float, float, list[float]]:
    """Median times of ``fake_quantize_`` and of the floor ``out.copy_(w)``, and the per-round
    ratios (their median is the figure, min-max its spread), measured alternately
    (on a shared machine the load drifts by 2-5x within a minute, and a ratio of two timings taken
    seconds apart inherits it). Each quantization runs on a fresh copy of the original values
    (a table search on already quantized values would hit fewer table entries), with that copy
    and the floor's source pushed out of the caches first by an untimed 64 MB copy."""
    buf, out = torch.empty_like(w), torch.empty_like(w)
    junk_src, junk = torch.ones(1 << 24), torch.empty(1 << 24)
    ts, fs = [], []
    for _ in range(repeats + 1):  # the first round warms up
        buf.copy_(w)
        junk.copy_(junk_src)
        t = time.perf_counter()
        fake_quantize_(buf, spec)
        ts.append(time.perf_counter() - t)
        junk.copy_(junk_src)
        t = time.perf_counter()
        out.copy_(w)
        fs.append(time.perf_counter() - t)
    ts, fs = ts[1:], fs[1:]
    return 1e3 * statistics.median(ts), 1e3 * statistics.median(fs), [a / b for a, b in zip(ts, fs)]


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


def run_case(name: str, spec: QuantSpec, w: torch.Tensor, buf: torch.Tensor, bnb, repeats: int) -> None:
    """One case: compile (timed), check bit identity with eager, then time against the floor."""
    buf.copy_(w)
    take_compile_seconds()
    fake_quantize_(buf, spec)  # first call: compiles the kernel unless this process has it
    compile_s = take_compile_seconds()
    assert torch.equal(buf, fake_quantize(w, spec, kernel="eager")), name  # bit-identical
    ms, fl, per_round = paired_ms(w, spec, repeats)
    ratio = statistics.median(per_round)
    target = 3 if spec.bits == 4 else 6
    speedup = f"{bnb / ms:>8.1f}" if bnb is not None else f"{'n/a':>8}"
    ok = ratio <= target and (spec.bits != 4 or bnb is None or bnb / ms >= 8)
    print(f"{name:<18}{ms:>9.1f}{fl:>10.1f}{ratio:>9.2f} [{min(per_round):.2f}-{max(per_round):.2f}]{speedup}"
          f"{compile_s:>11.1f}  <= {target}x floor{', >= 8x bnb' if spec.bits == 4 else ''}: "
          f"{'ok' if ok else 'MISSED'} (median of {len(per_round)} alternating rounds; "
          f"load {os.getloadavg()[0]:.1f})")


def alternating_ratios(run, w: torch.Tensor, repeats: int) -> tuple[float, float, float, float]:
    """Median ms of ``run(buf)`` on a fresh copy of ``w`` and of the ``copy_`` floor, measured
    alternately ``repeats`` times (after one warm-up round), with the median ratio and the
    spread (min, max) of the per-round ratios: on a shared machine the load drifts within a run."""
    buf, out = torch.empty_like(w), torch.empty_like(w)
    ts, fs = [], []
    for _ in range(repeats + 1):
        buf.copy_(w)
        t = time.perf_counter()
        run(buf)
        ts.append(time.perf_counter() - t)
        t = time.perf_counter()
        out.copy_(w)
        fs.append(time.perf_counter() - t)
    ts, fs = ts[1:], fs[1:]
    ratios = sorted(a / b for a, b in zip(ts, fs))
    return 1e3 * statistics.median(ts), 1e3 * statistics.median(fs), statistics.median(ratios), ratios[0], ratios[-1]


def mx_section(w: torch.Tensor, repeats: int) -> None:
    """Issue 18 section 3: each microscaling type fake-quantized in place (``fake_quantize_mx_``:
    the fused numba kernels for float32), alternated with the ``copy_`` floor; target <= 6x the
    floor for the OCP/NVIDIA types. ggml's own
    ``ggml_quantize_chunk`` + gguf dequantize of the same tensor is timed for the ``gguf_*`` types."""
    from kscale.quant.mx import MX_TYPES, fake_quantize_mx, fake_quantize_mx_

    print(f"\nmicroscaling, {repeats} alternating rounds: median ms, median ratio to copy_ [min-max]")
    print(f"{'type':<14}{'ms':>9}{'floor ms':>10}{'x floor':>9}{'spread':>18}  target / ggml")
    for name, mx in MX_TYPES.items():
        assert torch.equal(fake_quantize_mx_(w.clone(), name), fake_quantize_mx(w, name, kernel="eager")), name
        ms, fl, ratio, lo, hi = alternating_ratios(lambda b: fake_quantize_mx_(b, name), w, repeats)
        if mx.family == "ggml":
            note = _ggml_reference_note(w, name, ms, repeats)
        else:
            note = f"<= 6x floor: {'ok' if ratio <= 6 else 'MISSED'}"
        print(f"{name:<14}{ms:>9.1f}{fl:>10.1f}{ratio:>9.2f}{f'[{lo:.2f}-{hi:.2f}]':>18}  {note}")


def _ggml_reference_note(w: torch.Tensor, name: str, ms: float, repeats: int) -> str:
    try:
        import gguf
        from gguf.quants import dequantize

        from kscale.quant.gguf.ggml_reference import ggml_available, ggml_quantize
    except ImportError as err:
        return f"ggml reference unavailable ({err})"
    if not ggml_available():
        return "ggml reference unavailable (libggml-python)"
    qtype = getattr(gguf.GGMLQuantizationType, name.removeprefix("gguf_").upper())
    ref = best_ms(lambda: dequantize(ggml_quantize(w, int(qtype)).numpy(), qtype), max(1, repeats // 2))
    return f"ggml quantize+dequantize {ref:.1f} ms: {ms / ref:.2f}x ggml"


def gguf_section(w: torch.Tensor, repeats: int, names: list[str]) -> None:
    """Issue 18 section 2: ``fake_quantize_gguf`` of each GGUF type against llama.cpp's own path on
    the same tensor, ``ggml_quantize_chunk`` + ``gguf.quants.dequantize``, timed alternately
    (kscale, then ggml, each round) so that load drifts hit both; prints the median of the
    per-round ratios and their spread. Target <= 1x ggml for q4_k and q8_0; the bytes are checked
    equal first. (No imatrix: ggml's reference paths.)"""
    try:
        import gguf

        from kscale.quant.gguf import GGUF_TYPES, fake_quantize_gguf, quantize_gguf
        from kscale.quant.gguf.ggml_reference import ggml_available, ggml_quantize
    except ImportError as err:
        print(f"\nGGUF types: ggml reference unavailable ({err})")
        return
    if not ggml_available():
        print("\nGGUF types: ggml reference unavailable (libggml-python)")
        return
    print(f"\nGGUF types, {repeats} alternating rounds: median ms, median ratio to ggml quantize+dequantize "
          f"[min-max], load {os.getloadavg()[0]:.1f}")
    print(f"{'type':<8}{'kscale ms':>11}{'ggml ms':>10}{'x ggml':>9}{'spread':>16}  target")
    for name in names:
        t = GGUF_TYPES[name]
        qtype = gguf.GGMLQuantizationType(t.ggml_type)
        assert torch.equal(quantize_gguf(w, name), ggml_quantize(w, t.ggml_type)), name  # also warms up
        ks, gs = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            fake_quantize_gguf(w, name)
            ks.append(time.perf_counter() - start)
            start = time.perf_counter()
            gguf.quants.dequantize(ggml_quantize(w, t.ggml_type).numpy(), qtype)
            gs.append(time.perf_counter() - start)
        ratios = sorted(a / b for a, b in zip(ks, gs))
        ratio = statistics.median(ratios)
        target = f"<= 1x ggml: {'ok' if ratio <= 1 else 'MISSED'}" if name in ("q4_k", "q8_0") else "reported"
        print(f"{name:<8}{1e3 * statistics.median(ks):>11.1f}{1e3 * statistics.median(gs):>10.1f}{ratio:>9.2f}"
              f"{f'[{ratios[0]:.2f}-{ratios[-1]:.2f}]':>16}  {target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--kernel", default="auto", choices=["auto", "eager", "compiled"])
    ap.add_argument("--gguf-types", default="q8_0,q4_k",
                    help="GGUF types for --section gguf/all, comma-separated, or 'all' (issue 18 section 2)")
    ap.add_argument("--section", default="all", choices=["all", "blockwise", "mx", "gguf"],
                    help="mx: only the microscaling types (issue 18 section 3)")
    args = ap.parse_args()
    gguf_types = args.gguf_types.split(",")
    if gguf_types == ["all"]:
        from kscale.quant.gguf import GGUF_TYPES

        gguf_types = list(GGUF_TYPES)
    if args.section == "gguf":
        torch.manual_seed(0)
        gguf_section(torch.randn(args.size, args.size) * 0.02, max(5, args.repeats), gguf_types)
        return
    if args.section == "mx":
        torch.manual_seed(0)
        mx_section(torch.randn(args.size, args.size) * 0.02, max(5, args.repeats))
        return
    set_kernel(args.kernel)
    torch.manual_seed(0)
    w = torch.randn(args.size, args.size)
    buf = torch.empty_like(w)
    floor = best_ms(lambda: buf.copy_(w), args.repeats)
    clone = best_ms(lambda: w.clone(), args.repeats)
    bnb_run, bnb_err = bnb_nf4(w)
    bnb = best_ms(bnb_run, args.repeats) if bnb_run else None
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, tensor {args.size}x{args.size} fp32, "
          f"B=64, kernel={args.kernel}")
    print(f"{'case':<18}{'ms':>9}{'floor ms':>10}{'x floor':>9}{'bnb/x':>8}{'compile s':>11}  target")
    print(f"{'copy_':<18}{floor:>9.1f}{floor:>10.1f}{1.0:>9.2f}")
    print(f"{'clone':<18}{clone:>9.1f}{floor:>10.1f}{clone / floor:>9.2f}")
    if bnb is not None:
        print(f"{'bnb nf4':<18}{bnb:>9.1f}{floor:>10.1f}{bnb / floor:>9.2f}")
    else:
        print(f"bnb nf4: unavailable ({bnb_err})")
    for engine in ("numba", "inductor"):
        _fast._state["numba"] = None if engine == "numba" else "off: measuring inductor"
        for name, spec in CASES:
            run_case(f"{name} {engine}", spec, w, buf, bnb, args.repeats)
    if args.section == "all":
        mx_section(w * 0.02, max(5, args.repeats))
        gguf_section(w * 0.02, max(5, args.repeats), gguf_types)



if __name__ == "__main__":
    main()
