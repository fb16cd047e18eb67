"""Cross-check a fake-quantized cell against a real low-bit kernel (bitsandbytes ``Linear4bit``).

kscale measures every cell with *fake* quantization: weights are quantized and dequantized in
place and the model runs its ordinary matmuls. That is only a statement about real 4-bit
inference if a real kernel, storing the codes and constants and dequantizing on the fly,
gives the same numbers. This module re-evaluates a cell with bitsandbytes' ``Linear4bit``
(NF4, absmax per block of ``blocksize`` weights, fp32 constants, no double quantization)
swapped in for every quantized ``nn.Linear``/``Conv1D``, and writes the kernel's metrics beside
the fake-quant ones (``kernel_nll_<data>`` next to ``nll_<data>``, and their difference).

A cell has a kernel equivalent only when the kernel stores exactly what the cell describes
(:data:`KERNELS`: method ``rtn``, data type ``nf``, 4 bits, a block size bitsandbytes accepts,
absmax blocks, no outlier columns). Any other cell gets ``kernel=None`` and the reason, never a
silent skip. ``scale_bits=16`` cells are compared too (the kernel keeps fp32 absmax), with a note.
The model's layout must fit the kernel as well: bitsandbytes 0.50.2's CPU ``dequantize_4bit``
returns wrongly ordered values when a block crosses a row (``in_features`` not a multiple of
the block size: measured for 16, 32, 48 and 96 columns with blocksize 64, while
``quantize_4bit``'s packed codes and absmax are right), so such a model is reported as having
no kernel equivalent rather than compared.

    python -m kscale.crosscheck --model DIR --family gpt2 --dataset wikitext2 --max-tokens 8192
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kscale.evaluate import EvalSuite, PerplexitySpec
from kscale.models import ModelSpec, get_family, load_model
from kscale.paths import default_data_dir
from kscale.quant import QuantSpec, WeightSnapshot, apply_method
from kscale.quant.formats import format_of
from kscale.quant.modules import quantizable_modules, weight_matrix
from kscale.registry import Registry

log = logging.getLogger(__name__)

#: block sizes ``bitsandbytes.functional.quantize_4bit`` accepts (REFERENCES.md §1.4)
BNB_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class KernelBackend:
    """A real kernel that can stand in for fake quantization.

    Attributes:
        name: registry name (recorded in the cross-check row).
        why_not: ``(method, spec) -> reason or None``: None when the kernel stores exactly the
            cell's codes and constants.
        swap: ``(model, spec, module_filter) -> context manager`` that puts kernel modules in
            place of the quantized linears and restores the originals on exit.
        version: ``() -> str``, the library version for the record.
    """

    name: str
    why_not: Callable[[str, Any], str | None]
    swap: Callable[..., Any]
    version: Callable[[], str]


KERNELS: Registry[KernelBackend] = Registry("kernel backend")


def _bnb_why_not(method: str, spec: Any) -> str | None:
    if spec.is_baseline:
        return "16-bit baseline: nothing is quantized"
    if method != "rtn":
        return f"method {method}: the kernel only stores round-to-nearest codes of its own quantizer"
    if spec.format != "blockwise":
        return f"format {spec.format}: bitsandbytes' Linear4bit stores the blockwise NF4/FP4 format only"
    if spec.dtype != "nf" or spec.bits != 4:
        return (f"{spec.dtype}{spec.bits}: bitsandbytes' 4-bit kernels are NF4 and FP4 only, and kscale's "
                "float4 codebook differs from bnb's FP4 table in its subnormal (REFERENCES.md §1.4)")
    if spec.blocksize not in BNB_BLOCKSIZES:
        return f"blocksize {spec.blocksize}: quantize_4bit accepts {', '.join(map(str, BNB_BLOCKSIZES))}"
    if spec.centered:
        return "centered blocks: the kernel stores absmax only (no offset)"
    if spec.outlier_frac:
        return "outlier columns: Linear4bit has no 16-bit columns"
    return None


@contextlib.contextmanager
def _bnb_swap(model, spec, module_filter) -> Iterator[int]:
    """Replace each quantizable module by a ``bnb.nn.Linear4bit`` holding the same weights."""
    import bitsandbytes as bnb  # here: an optional dependency (dev extra), needed only to cross-check

    originals: list[tuple[Any, str, Any]] = []
    modules = quantizable_modules(model, module_filter)
    try:
        for name, module in modules.items():
            W = weight_matrix(module).detach()  # [out, in] (Conv1D transposed)
            dtype = W.dtype
            bias = getattr(module, "bias", None)
            q = bnb.nn.Linear4bit(W.shape[1], W.shape[0], bias=bias is not None, compute_dtype=dtype,
                                  compress_statistics=False, quant_type="nf4", quant_storage=torch.uint8)
            q.weight = bnb.nn.Params4bit(W.to(torch.float32).contiguous().clone(), requires_grad=False,
                                         quant_type="nf4", blocksize=int(spec.blocksize),
                                         compress_statistics=False)
            if bias is not None:
                q.bias = torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
            q = q.to(W.device)  # Params4bit quantizes on this move (CPU and CUDA backends)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            originals.append((parent, child, module))
            setattr(parent, child, q)
        yield len(originals)
    finally:
        for parent, child, module in reversed(originals):
            setattr(parent, child, module)


def _bnb_version() -> str:
    import bitsandbytes  # here: an optional dependency (dev extra)

    return f"bitsandbytes {bitsandbytes.__version__}"


KERNELS.register("bnb-nf4", KernelBackend("bnb-nf4", _bnb_why_not, _bnb_swap, _bnb_version))


def layout_problem(model, spec, module_filter) -> str | None:
    """Why the kernel cannot hold this model's quantized matrices exactly (None if it can):
    every matrix needs ``in_features % blocksize == 0`` so no block crosses a row."""
    bad = [f"{n} (in_features={weight_matrix(m).shape[1]})"
           for n, m in quantizable_modules(model, module_filter).items()
           if spec.blocksize and weight_matrix(m).shape[1] % spec.blocksize]
    if not bad:
        return None
    return (f"blocks of {spec.blocksize} would cross rows in {len(bad)} matrices, e.g. {bad[0]}; "
            "bitsandbytes' CPU dequantize_4bit mis-orders such blocks")


def kernel_for(method: str, spec: Any) -> tuple[str | None, str]:
    """``(backend name, "")`` for the first kernel equivalent to the cell, else ``(None, reasons)``."""
    reasons = []
    for name in KERNELS.names():
        why = KERNELS.get(name).why_not(method, spec)
        if why is None:
            return name, ""
        reasons.append(f"{name}: {why}")
    return None, "no kernel equivalent (" + "; ".join(reasons) + ")"


@dataclass(frozen=True)
class CrossCheck:
    """Fake-quant and kernel metrics of one cell (``kernel_*`` None when there is no kernel)."""

    cell: Mapping[str, Any]
    kernel: str | None
    reason: str
    fake: Mapping[str, float]
    kernel_metrics: Mapping[str, float] | None
    notes: tuple[str, ...] = field(default=())

    def delta(self, metric: str) -> float | None:
        if self.kernel_metrics is None or metric not in self.kernel_metrics or metric not in self.fake:
            return None
        return float(self.kernel_metrics[metric]) - float(self.fake[metric])

    def to_row(self) -> dict[str, Any]:
        """The cell's identity, fake metrics as ``<metric>``, kernel ones as ``kernel_<metric>``,
        and ``delta_kernel_<metric>`` for the loss metrics."""
        row = dict(self.cell)
        row.update(self.fake)
        row.update(kernel=self.kernel, kernel_reason=self.reason or None, kernel_notes="; ".join(self.notes))
        if self.kernel_metrics is not None:
            for k, v in self.kernel_metrics.items():
                row[f"kernel_{k}"] = v
                d = self.delta(k)
                if d is not None and k.startswith(("nll_", "ppl_", "kl_")):
                    row[f"delta_kernel_{k}"] = d
        return row


def crosscheck(model, spec, *, evaluate: Callable[[Any], Mapping[str, float]], module_filter=None,
               method: str = "rtn", kernel: str | None = None) -> CrossCheck:
    """Evaluate ``model`` fake-quantized with ``spec`` and with the kernel; restore it after.

    Args:
        model: the 16-bit model (unchanged on return).
        spec: the cell's ``QuantSpec``.
        evaluate: ``model -> metrics`` (e.g. ``EvalSuite(...).run``), the same for both passes.
        module_filter: which modules the cell quantizes (the family's).
        method: the cell's method (only ``rtn`` has kernel equivalents).
        kernel: force a backend name; default the first equivalent one.
    """
    name, reason = (kernel, "") if kernel else kernel_for(method, spec)
    if kernel and KERNELS.get(kernel).why_not(method, spec):
        name, reason = None, f"{kernel}: {KERNELS.get(kernel).why_not(method, spec)}"
    cell = {**spec.to_row(), "method": method}
    recipes = format_of(spec).per_tensor_recipe  # a llama.cpp file type also quantizes embeddings/head
    with WeightSnapshot(model, module_filter, recipes=recipes) as snapshot:
        apply_method(method, model, spec, module_filter=module_filter)
        fake = {k: float(v) for k, v in evaluate(model).items() if isinstance(v, (int, float))}
        snapshot.restore()
    if name is None or (problem := layout_problem(model, spec, module_filter)):
        if name is not None:
            name, reason = None, f"no kernel equivalent for this model ({name}): {problem}"
        log.info("cell %s: %s", cell, reason)
        return CrossCheck(cell, None, reason, fake, None)
    notes = []
    if spec.scale_bits != 32:
        notes.append(f"fake-quant stores block constants at {spec.scale_bits} bits; the kernel keeps fp32 absmax")
    backend = KERNELS.get(name)
    with backend.swap(model, spec, module_filter) as n:
        log.info("cell %s: %d modules on %s", cell, n, name)
        real = {k: float(v) for k, v in evaluate(model).items() if isinstance(v, (int, float))}
    notes.append(backend.version())
    return CrossCheck(cell, name, "", fake, real, tuple(notes))


def write_crosscheck(result: CrossCheck, path: str | Path) -> Path:
    """Append ``result.to_row()`` as one JSON line (e.g. ``results/<study>/crosscheck.jsonl``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(result.to_row(), default=str, allow_nan=True) + "\n")
    return path


# ----------------------------------------------------------------------------- CLI

def _suite(tokenizer, *, dataset: str, seqlen: int, max_tokens: int | None, data_dir, device,
           corpus_options: Mapping[str, Any] | None = None):
    spec = PerplexitySpec(dataset=dataset, protocol="gptq", seqlen=seqlen, max_tokens=max_tokens, kl=False)
    return EvalSuite([spec], tokenizer, data_dir=data_dir, cache_dir=None, device=device,
                     seqlen_default=seqlen, corpus_options=corpus_options)


def main(argv: Sequence[str] | None = None) -> int:
    """Cross-check one local checkpoint at one cell; prints and optionally appends the row."""
    p = argparse.ArgumentParser(prog="python -m kscale.crosscheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="local checkpoint folder (config.json + weights)")
    p.add_argument("--family", required=True, help="kscale family (its module filter): gpt2, opt, ...")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--dtype", default="nf")
    p.add_argument("--blocksize", type=int, default=64)
    p.add_argument("--scale-bits", type=int, default=32)
    p.add_argument("--dataset", default="wikitext2")
    p.add_argument("--seqlen", type=int, default=None, help="default: the family's")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="append the row to this JSONL file")
    a = p.parse_args(argv)

    fam = get_family(a.family)
    loaded = load_model(ModelSpec(family=a.family, size=Path(a.model).name, checkpoint=str(a.model),
                                  local_path=str(a.model), dtype="float32", device=a.device))
    suite = _suite(loaded.tokenizer, dataset=a.dataset, seqlen=a.seqlen or fam.seqlen, max_tokens=a.max_tokens,
                   data_dir=default_data_dir(), device=a.device)
    spec = QuantSpec(bits=a.bits, dtype=a.dtype, blocksize=a.blocksize, scale_bits=a.scale_bits)
    res = crosscheck(loaded.model, spec, evaluate=lambda m: suite.run(m, progress=False),
                     module_filter=fam.module_filter)
    row = res.to_row()
    print(json.dumps(row, indent=2, default=str))  # noqa: T201 - CLI output
    if a.out:
        write_crosscheck(res, a.out)
    nll = f"nll_{a.dataset}"
    if res.kernel is None:
        print(f"no kernel equivalent: {res.reason}")  # noqa: T201
    elif res.delta(nll) is not None and not math.isfinite(res.delta(nll)):
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["KERNELS", "BNB_BLOCKSIZES", "CrossCheck", "KernelBackend", "crosscheck", "kernel_for",
           "layout_problem", "write_crosscheck"]
