"""Write a quantized model's stored bits to a file: proof that every bit the ledger counts exists.

    python -m kscale.export --model DIR --format NAME [--option KEY=VALUE ...] --out FILE [--family NAME]
                            [--calib DATASET --calib-samples 128 --calib-seqlen 512 --calib-seed 0]

Every parameter tensor goes into the file once (tied weights once): the quantized weight
matrices as the bytes their format stores (``StorageFormat.pack``), every other parameter as
F16. GGUF formats (llama.cpp's block types ``q4_0 ... iq4_xs``, its file types ``ftype_q4_k_m``,
... -- each tensor at its recipe type, token embedding and head included -- and
``gguf_mxfp4``/``gguf_nvfp4``) are written with ``gguf``'s ``GGUFWriter``, each quantized tensor
tagged with the ggml type it is stored in (a fallback type, or F16, where its rows do not block);
all other formats as safetensors holding one uint8 tensor of packed codes and constants per
quantized matrix (metadata: format, config, logical shapes). 8 x the tensor bytes in the file equals the ledger's
``total_bits`` for the same model, format and module filter (checked after writing).

The GGUF file is a container for the bits, not a llama.cpp model: tensors keep their Hugging Face
names and no architecture metadata or vocabulary is written, so llama.cpp will not load it.
``gguf`` is a dev-only dependency; GGUF export without it says which package to install.
A format configured with ``imatrix=true`` gets llama.cpp's importance matrices from ``--calib``
windows (``kscale.quant.imatrix``: mean x^2 per input column, the 16-bit model's activations).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from kscale.models import get_family
from kscale.quant.calibration import CalibrationConfig, calibration_tokens
from kscale.quant.formats import FORMATS, resolve_format
from kscale.quant.formats.gguf import stored_type
from kscale.quant.gguf import GGUF_TYPES
from kscale.quant.imatrix import imatrix_for
from kscale.quant.ledger import ledger_for
from kscale.quant.modules import quantizable_modules, weight_matrix

log = logging.getLogger(__name__)

__all__ = ["ExportSummary", "export_model", "file_tensor_bytes", "main"]

#: ggml type names of the kscale formats written as GGUF (besides the GGUF_TYPES names themselves)
_GGML_NAMES = {"gguf_mxfp4": "MXFP4", "gguf_nvfp4": "NVFP4"}


@dataclass
class ExportSummary:
    """What was written: ``tensor_bytes`` (data bytes of all tensors), the ledger's ``total_bits``,
    and per tensor its stored type (``f16`` for parameters kept at 16 bits)."""

    path: Path
    container: str
    tensor_bytes: int
    total_bits: int
    types: dict[str, str] = field(default_factory=dict)

    @property
    def matches_ledger(self) -> bool:
        return 8 * self.tensor_bytes == self.total_bits


def _is_gguf(obj: Any) -> bool:
    return obj.name in GGUF_TYPES or obj.name in _GGML_NAMES or obj.per_tensor_recipe


def _gguf_module():
    try:
        import gguf  # here: an optional dependency (dev extra); a missing one is one clear error
    except ImportError as err:
        raise RuntimeError("GGUF export needs the gguf package: pip install gguf "
                           "(part of kscale's dev extra: pip install -e '.[dev]')") from err
    return gguf


def _stored_ggml_type(fmt_name: str, n_per_row: int) -> str:
    """The ggml type a GGUF format stores a tensor with rows of ``n_per_row`` in (or ``f16``)."""
    if fmt_name in _GGML_NAMES:  # ggml's MXFP4/NVFP4, or F16 for rows that are not whole blocks
        fits = FORMATS.get(fmt_name).stored_type((1, n_per_row), None) == fmt_name
        return _GGML_NAMES[fmt_name] if fits else "F16"
    return stored_type(fmt_name, n_per_row).upper()


def _quantized_tensors(model: nn.Module, obj: Any, config: Any, module_filter: Any,
                       imatrices: dict[str, torch.Tensor] | None = None):
    """(name, weight parameter, packed bytes, [out, in] shape, stored ggml type) of each quantized
    matrix, once. A per-tensor recipe packs each of its tensors in that tensor's own type."""
    if obj.per_tensor_recipe:  # (module name, module, per-tensor format, config, imatrix source)
        items = [(t.name, t.module, FORMATS.get(t.config.format), t.config, t.imatrix_from)
                 for t in obj.targets(model, config)]
    else:
        items = [(name, m, obj, config, name) for name, m in quantizable_modules(model, module_filter).items()]
    seen: set[int] = set()
    for name, module, fmt, cfg, source in tqdm(items, desc=f"packing {obj.name}", unit="tensor", leave=False):
        if id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        w = weight_matrix(module).detach().float().contiguous()
        extra = {} if imatrices is None or source is None else {"imatrix": imatrices[source]}
        kind = _stored_ggml_type(fmt.name, int(w.shape[1])) if _is_gguf(fmt) else None
        yield f"{name}.weight", module.weight, fmt.pack(w, cfg, **extra), tuple(w.shape), kind


def export_model(model: nn.Module, fmt: Any, out: str | Path, *, options: dict[str, Any] | None = None,
                 module_filter: Any = None, calibration: Any = None) -> ExportSummary:
    """Quantize ``model``'s selected matrices in ``fmt`` (a name plus ``options``, or a config)
    and write every parameter to ``out`` (GGUF or safetensors, see the module docstring).
    ``calibration`` (a :class:`kscale.quant.calibration.CalibrationSet` or token ids
    [windows, seqlen]) feeds the importance matrices of an ``imatrix=true`` config.
    The model's weights are not changed."""
    obj, config = resolve_format(fmt, options)
    imatrices = None
    if getattr(config, "needs_calibration", False):
        if calibration is None:
            raise ValueError(f"format {obj.name} with imatrix=true needs calibration windows: "
                             "pass --calib DATASET (or calibration= in Python)")
        imatrices = dict(imatrix_for(model, config, calibration, module_filter))
    ledger = ledger_for(model, config, module_filter)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    quantized = list(_quantized_tensors(model, obj, config, module_filter, imatrices))
    q_ids = {id(p) for _, p, _, _, _ in quantized}
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in q_ids]  # tied: listed once
    writer = _write_gguf if _is_gguf(obj) else _write_safetensors
    types = writer(out, obj, config, quantized, rest)
    summary = ExportSummary(out, "gguf" if writer is _write_gguf else "safetensors",
                            file_tensor_bytes(out), ledger.total_bits, types)
    if not summary.matches_ledger:
        raise RuntimeError(f"{out}: 8 x {summary.tensor_bytes} tensor bytes != ledger total_bits "
                           f"{summary.total_bits}; the format's pack() and tensor_cost() disagree")
    log.info("exported %s format=%s tensors=%d bytes=%d total_bits=%d", out, obj.name, len(types),
             summary.tensor_bytes, summary.total_bits)
    return summary


def _f16(p: torch.Tensor) -> np.ndarray:
    return p.detach().to(torch.float16).cpu().numpy()


def _write_gguf(out: Path, obj: Any, config: Any, quantized, rest) -> dict[str, str]:
    gguf = _gguf_module()
    writer = gguf.GGUFWriter(str(out), arch="kscale")
    writer.add_string("kscale.format", obj.name)
    writer.add_string("kscale.config", str(config))
    types = {}
    for name, _, data, (rows, n_per_row), kind in quantized:
        raw = np.frombuffer(data, dtype=np.uint8)
        if kind == "F16":
            writer.add_tensor(name, raw.view(np.float16).reshape(rows, n_per_row))
        else:
            writer.add_tensor(name, raw.reshape(rows, -1), raw_dtype=gguf.GGMLQuantizationType[kind])
        types[name] = kind.lower()
    for name, p in rest:
        writer.add_tensor(name, _f16(p))
        types[name] = "f16"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


def _write_safetensors(out: Path, obj: Any, config: Any, quantized, rest) -> dict[str, str]:
    arrays, types, shapes = {}, {}, {}
    for name, _, data, shape, _ in quantized:
        arrays[name] = np.frombuffer(data, dtype=np.uint8).copy()
        types[name] = obj.stored_type(shape, config) or obj.name  # f16: rows not whole blocks
        shapes[name] = list(shape)
    for name, p in rest:
        arrays[name] = _f16(p)
        types[name] = "f16"
    meta = {"kscale.format": obj.name, "kscale.config": str(config), "kscale.shapes": json.dumps(shapes)}
    save_file(arrays, str(out), metadata=meta)
    return types


def file_tensor_bytes(path: str | Path) -> int:
    """Data bytes of all tensors in a GGUF or safetensors file (headers and alignment padding
    excluded), read back from the file itself: GGUF through ``gguf.GGUFReader``; safetensors from
    its JSON header's ``data_offsets``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
            if magic[:4] == b"GGUF":
                reader = _gguf_module().GGUFReader(str(path))
                return sum(int(t.n_bytes) for t in reader.tensors)
            size = int.from_bytes(magic, "little")
            if len(magic) < 8 or size > path.stat().st_size - 8:
                raise ValueError("neither the GGUF magic nor a safetensors header length")
            header = json.loads(f.read(size))
        return sum(end - begin for key, (begin, end) in
                   ((k, v["data_offsets"]) for k, v in header.items() if k != "__metadata__"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a readable GGUF or safetensors file: {err}") from err


def _parse_options(items: list[str]) -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option takes KEY=VALUE; got {item!r}")
        options[key] = json.loads(value) if value.lower() in ("true", "false") or value.lstrip("-").isdigit() \
            else value
    return options


def _load(model_dir: Path) -> nn.Module:
    if not (model_dir / "config.json").exists():
        raise ValueError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    try:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                    local_files_only=True, trust_remote_code=False).eval()
    except Exception as err:  # damaged weights, unknown architecture: one message
        raise ValueError(f"cannot load a causal LM from {model_dir}: {type(err).__name__}: {err}") from err


def _calibration(args: argparse.Namespace, model_dir: Path):
    """The CLI's calibration windows (``--calib``), tokenized with the model's own tokenizer."""
    if args.calib is None:
        return None
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    config = CalibrationConfig(dataset=args.calib, nsamples=args.calib_samples, seqlen=args.calib_seqlen,
                               seed=args.calib_seed)
    return calibration_tokens(config, tokenizer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kscale.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="Hugging Face model directory")
    ap.add_argument("--format", required=True, help="a registered format (kscale.quant.formats.FORMATS)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="format option, e.g. bits=4 dtype=nf blocksize=64 for blockwise")
    ap.add_argument("--out", required=True, type=Path, help="output file (.gguf or .safetensors)")
    ap.add_argument("--family", default=None, help="take the module filter of this kscale family")
    ap.add_argument("--calib", default=None, metavar="DATASET",
                    help="calibration corpus for imatrix=true (wikitext2, c4, ptb, text, toy)")
    ap.add_argument("--calib-samples", type=int, default=128, help="calibration windows")
    ap.add_argument("--calib-seqlen", type=int, default=512, help="tokens per calibration window")
    ap.add_argument("--calib-seed", type=int, default=0, help="seed of the window positions")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        module_filter = None
        if args.family:
            module_filter = get_family(args.family).module_filter
        model = _load(args.model)
        summary = export_model(model, args.format, args.out, options=_parse_options(args.option),
                               module_filter=module_filter, calibration=_calibration(args, args.model))
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {summary.path} ({summary.container}): {len(summary.types)} tensors, "
          f"{summary.tensor_bytes} tensor bytes = {summary.total_bits} bits = the ledger's total_bits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
