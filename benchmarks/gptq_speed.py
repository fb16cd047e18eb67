"""GPTQ speed and quality on single layers (CPU): kscale vs RTN vs a plain reference of the paper.

For each layer size (default 1024x1024 and 4096x4096) this measures, in one run:

* ``rtn_s``: kscale round-to-nearest (``fake_quantize``) of the layer;
* ``ref_s``: a plain implementation of GPTQ's Algorithm 1 (Frantar et al. 2022: Cholesky of
  H⁻¹, lazy batches of 128 columns, symmetric per-row absmax int grid), written here from the
  paper so that the comparison needs no third-party code;
* ``gptq_s``: :func:`kscale.quant.gptq.gptq_quantize` with the same per-row int spec
  (``blocksize=None``), and ``gptq_b64_s`` with the paper's blocking (nf, B=64);
* ``err_ratio``: output error ‖WX − Q(W)X‖² of GPTQ divided by RTN's, on held-out inputs
  drawn from the calibration distribution (low rank + noise, uneven feature scales).

Target (issue 7): ``gptq_s / ref_s <= 1`` (no slower than the reference) and ``err_ratio < 1``.
Times exclude computing H (shared by both). The four commands alternate over ``--repeats`` rounds
(``benchmarks/timing.py``, issue 19 §5): each ``*_s`` is a median, and ``gptq_vs_ref`` the
median of the per-round ratios with its min-max spread. Run: ``python benchmarks/gptq_speed.py``
(``--sizes 1024 4096 --bits 4 --threads 1``); prints a table and, with ``--json PATH``, writes it.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics

import torch
from timing import DEFAULT_REPEATS, alternate, fmt, load, ratios, verdict

from kscale.quant import QuantSpec, fake_quantize
from kscale.quant.gptq import KbitQuantizer, gptq_quantize

log = logging.getLogger("gptq_speed")


def reference_gptq(W: torch.Tensor, H: torch.Tensor, bits: int, damp: float = 0.01, block: int = 128) -> torch.Tensor:
    """GPTQ Algorithm 1 as printed in the paper, with a symmetric per-row absmax int grid."""
    W = W.clone()
    H = H.clone()
    rows, cols = W.shape
    dead = H.diagonal() == 0
    H.diagonal()[dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(damp * H.diagonal().mean())
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    top = 2 ** (bits - 1) - 1
    scale = W.abs().amax(dim=1).clamp_min(1e-12) / top  # [rows]
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        E = torch.zeros(rows, i2 - i1)
        for j in range(i1, i2):
            q = torch.clamp(torch.round(W[:, j] / scale), -top, top) * scale
            Q[:, j] = q
            E[:, j - i1] = (W[:, j] - q) / Hinv[j, j]
            W[:, j:i2] -= E[:, j - i1 : j - i1 + 1] * Hinv[j : j + 1, j:i2]
        W[:, i2:] -= E @ Hinv[i1:i2, i2:]
    return Q


def bench_layer(n: int, bits: int, nsamples: int, repeats: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rank = max(8, n // 32)
    basis = torch.randn(n, rank, generator=g)
    feat = 1 + 4 * torch.rand(n, 1, generator=g)

    def sample(m: int) -> torch.Tensor:  # [n, m]
        return (basis @ torch.randn(rank, m, generator=g) + 0.2 * torch.randn(n, m, generator=g)) * feat

    W = torch.randn(n, n, generator=g) / n**0.5
    X_cal, X_held = sample(nsamples), sample(1024)
    H = 2 * X_cal @ X_cal.T / nsamples
    row = QuantSpec(bits, "int", blocksize=None)
    b64 = QuantSpec(bits, "nf", blocksize=64)

    out: dict[str, object] = {}
    commands = {  # each keeps its last output for the error ratios
        "rtn": lambda: out.__setitem__("rtn", fake_quantize(W, row)),
        "ref": lambda: out.__setitem__("ref", reference_gptq(W, H, bits)),
        "gptq": lambda: out.__setitem__("gptq", gptq_quantize(W, H, KbitQuantizer(row, W), blocksize=None)),
        "gptq_b64": lambda: out.__setitem__("gptq_b64", gptq_quantize(W, H, KbitQuantizer(b64, W), blocksize=64)),
    }
    t = alternate(commands, repeats)  # the warm-up round compiles the fused RTN kernel
    rtn_s, ref_s, gptq_s, gptq_b64_s = (statistics.median(t[k]) for k in commands)
    R, Qref, res, res64 = out["rtn"], out["ref"], out["gptq"], out["gptq_b64"]
    vs_ref = ratios(t["gptq"], t["ref"])

    def out_err(Q: torch.Tensor) -> float:
        return float(((W - Q) @ X_held).pow(2).sum())

    err_rtn = out_err(R)
    return {
        "layer": f"{n}x{n}",
        "bits": bits,
        "nsamples": nsamples,
        "rtn_s": rtn_s,
        "ref_s": ref_s,
        "gptq_s": gptq_s,
        "gptq_b64_s": gptq_b64_s,
        "gptq_vs_ref": statistics.median(vs_ref),
        "gptq_vs_ref_spread": fmt(vs_ref),
        "gptq_vs_ref_target": verdict(vs_ref, 1.0, higher_is_better=False),
        "load": load(),
        "gptq_vs_rtn": gptq_s / rtn_s,
        "err_ratio": out_err(res.Q) / err_rtn,
        "err_ratio_ref": out_err(Qref) / err_rtn,
        "err_ratio_b64": out_err(res64.Q) / out_err(fake_quantize(W, b64)),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="layer sizes n (n x n)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--nsamples", type=int, default=2048, help="calibration input vectors")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="alternating rounds (median)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared, loaded CPU more threads spin-wait; 0 = torch's default)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for n in args.sizes:
        rows.append(bench_layer(n, args.bits, args.nsamples, args.repeats))
        log.info("done %dx%d", n, n)
    cols = ["layer", "rtn_s", "ref_s", "gptq_s", "gptq_b64_s", "gptq_vs_ref", "gptq_vs_rtn", "err_ratio", "err_ratio_ref", "err_ratio_b64"]
    print(" ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>13.4g}" if isinstance(r[c], float) else f"{r[c]:>13}" for c in cols))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    for r in rows:
        print(f"{r['layer']}: GPTQ / reference time = {r['gptq_vs_ref_spread']} (target <= 1x: "
              f"{r['gptq_vs_ref_target']}; {r['load']})")
    return rows


if __name__ == "__main__":
    main()
