"""Per-model sizes without loading weights: parameters, LM head, vocabulary, bytes per weight,
and the forward-FLOP model built on them.

Everything here reads only configs (a local ``config.json`` on the meta device, the family's
``model.n_params`` table, a provider's own architecture), so ``plan=true`` needs no download;
it sits below :mod:`kscale.estimate.tokens` and :mod:`kscale.estimate.jobs`, which use it.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kscale.estimate.devices import DeviceProfile
from kscale.registry import Registry

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- methods

#: Calibration cost in forward-pass equivalents per calibration token is the method's own
#: ``QuantMethod.calibration_passes`` (GPTQ 3.75: two block passes plus the Hessian products;
#: AWQ 1: one 16-bit pass, its alpha search works on d_in x d_in Gram matrices).


def _method(name: str):
    try:
        # on use: kscale.estimate imports without torch
        from kscale.quant.methods import METHODS

        return METHODS.get(name) if name in METHODS else None
    except ImportError:  # pragma: no cover
        return None


def forward_flops(n_params: int, tokens: int, *, scored: int | None = None,
                  head_params: int | None = None) -> float:
    """FLOPs of a forward pass that reads ``tokens`` tokens: 2 * n_params * tokens (one
    multiply-add per parameter per token; attention-score products are not counted, see the
    module doc). When ``head_params`` (the LM head's weights) is known, the head is charged only
    for the ``scored`` tokens, as the evaluation computes logits only there (zero-shot contexts
    are read but not scored); unknown, every token pays for it (an upper bound)."""
    flops = 2.0 * float(n_params) * float(tokens)
    if head_params and scored is not None:
        flops -= 2.0 * float(head_params) * float(tokens - scored)
    return flops


def calibration_tokens(cell: Any, family_seqlen: int) -> int:
    """Calibration tokens a cell's method reads (``nsamples * seqlen``), 0 without calibration."""
    if cell.is_baseline:
        return 0
    method = _method(cell.method)
    needs = getattr(method, "needs_calibration", False)
    if not needs:
        return 0
    options = cell.options_dict
    nsamples = int(options.get("nsamples") or 128)
    seqlen = int(options.get("seqlen") or family_seqlen)
    return nsamples * seqlen


# ----------------------------------------------------------------------------- n_params

def _model_cfg(plan: Any) -> Mapping[str, Any]:
    return dict((plan.config or {}).get("model") or {})


def n_params_for(plan: Any, spec: Any) -> tuple[int | None, str]:
    """``(n_params, source)`` of one model without loading weights.

    Sources, in order: a local checkpoint's ``config.json`` (the architecture instantiated on
    the meta device, so the count equals ``kscale.models.count_params`` of the loaded model;
    it wins because it *is* the model that will run), the composed config's ``model.n_params``
    table (size -> int, from the published ``config.json`` files, so the plan needs no
    download), a provider family's own architecture (toy), else ``(None, "unknown ...")``.
    """
    table = _model_cfg(plan).get("n_params") or {}
    value = table.get(spec.size) if isinstance(table, Mapping) else None
    folder = _local_folder(plan, spec)
    if folder is not None:
        try:
            counted = _meta_count(str(folder))
        except Exception as err:  # noqa: BLE001 - an estimate, not a load: say why and go on
            log.warning("%s-%s: cannot count parameters from %s: %s", spec.family, spec.size, folder, err)
        else:
            if value is not None and int(value) != counted:
                return counted, f"config.json (model.n_params says {int(value)})"
            return counted, "config.json"
    if value is not None:
        return int(value), "model.n_params"
    # on use: kscale.estimate imports without torch
    from kscale.models import get_family

    provider = get_family(spec.family).provider
    if provider and provider in PLAN_PARAM_COUNTERS:
        try:
            return int(PLAN_PARAM_COUNTERS.get(provider)(plan, spec)), f"{provider} architecture"
        except Exception as err:  # noqa: BLE001
            log.warning("%s-%s: cannot count parameters: %s", spec.family, spec.size, err)
    return None, (f"unknown: add model.n_params.{spec.size} to conf/model/{spec.family}.yaml "
                  "or give a local checkpoint")


def _toy_params(plan: Any, spec: Any) -> int:
    """A toy rung's parameters from its shape, built on the meta device (no training needed)."""
    return _toy_counts(plan, spec)[0]


def _toy_counts(plan: Any, spec: Any) -> tuple[int, int]:
    # on use: kscale.estimate imports without torch
    import torch

    from kscale.toy.ladder import SPECIAL_TOKENS, ToyOptions, data_source
    from kscale.toy.train import build_model

    opts = ToyOptions.from_mapping(plan.provider_options)
    vocab = len(data_source(opts).words) + len(SPECIAL_TOKENS)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(opts.architecture, opts.shape(spec.size), vocab, opts.train.seqlen, 0, opts.seed)
    return _counts(model)


#: Parameter counts for provider families whose checkpoints may not be built yet.
PLAN_PARAM_COUNTERS: Registry[Any] = Registry("plan parameter counter")
PLAN_PARAM_COUNTERS.register("toy", _toy_params)


def _local_folder(plan: Any, spec: Any) -> Path | None:
    if spec.local_path and (Path(spec.local_path) / "config.json").is_file():
        return Path(spec.local_path)
    return None


_META_COUNTS: dict[str, tuple[int, int]] = {}


def _meta_count(folder: str) -> int:
    """Parameters of the architecture in ``folder/config.json``, tied tensors once, no weights read."""
    return _meta_counts(folder)[0]


def _meta_counts(folder: str) -> tuple[int, int]:
    """``(parameters, LM-head weights)`` of ``folder/config.json``'s architecture (meta device)."""
    if folder not in _META_COUNTS:
        # on use: kscale.estimate imports without torch
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        _META_COUNTS[folder] = _counts(model)
    return _META_COUNTS[folder]


def _counts(model) -> tuple[int, int]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_params = int(head.weight.numel()) if head is not None and hasattr(head, "weight") else 0
    return int(sum(p.numel() for p in model.parameters())), head_params


def head_params_for(plan: Any, spec: Any) -> int | None:
    """Weights of the LM head (vocab x width), known when the architecture is local (config.json
    or a provider's own); None from the ``n_params`` table alone. The evaluation computes logits
    only at scored positions, so the head costs 2 * head_params per *scored* token."""
    folder = _local_folder(plan, spec)
    if folder is not None:
        try:
            return _meta_counts(str(folder))[1]
        except Exception:  # noqa: BLE001
            return None
    # on use: kscale.estimate imports without torch
    from kscale.models import get_family

    provider = get_family(spec.family).provider
    if provider == "toy":
        try:
            return _toy_counts(plan, spec)[1]
        except Exception:  # noqa: BLE001
            return None
    return None


def vocab_size_for(plan: Any, spec: Any, tokenizer: Any = None) -> int | None:
    """The output vocabulary (logit width): ``model.vocab_size``, a local ``config.json``, else
    the length of the family's own tokenizer (embeddings may be padded a little beyond it)."""
    value = _model_cfg(plan).get("vocab_size")
    if isinstance(value, Mapping):
        value = value.get(spec.size)
    if value is not None:
        return int(value)
    folder = _local_folder(plan, spec)
    if folder is not None:
        cfg = json.loads((folder / "config.json").read_text())
        if isinstance(cfg.get("vocab_size"), int):
            return int(cfg["vocab_size"])
    if tokenizer is not None:
        return len(tokenizer)
    return None


def weight_bytes_per_param(plan: Any, spec: Any, device: DeviceProfile | None = None) -> tuple[int, str]:
    """Bytes per parameter at the load dtype, as it will resolve on the *planned* device.

    ``model.dtype=auto`` resolves to float16 on CUDA and float32 on CPU when the job starts, so a
    plan priced for a GPU profile on a CPU-only login node uses 2 bytes, not the local
    resolution; ``checkpoint`` (the checkpoint's own) reads a local config.json, else assumes 2.
    """
    sizes = {"float32": 4, "float16": 2, "bfloat16": 2}
    requested = str(_model_cfg(plan).get("dtype") or spec.dtype)
    if requested == "auto" and device is not None:
        return (4, "auto=float32 (cpu)") if device.name == "cpu" else (2, "auto=float16 (gpu)")
    if spec.dtype in sizes and requested not in ("checkpoint",):
        return sizes[spec.dtype], spec.dtype
    folder = _local_folder(plan, spec)
    if folder is not None:
        cfg = json.loads((folder / "config.json").read_text())
        declared = cfg.get("torch_dtype") or cfg.get("dtype")
        if declared in sizes:
            return sizes[declared], f"checkpoint={declared}"
    if spec.dtype in sizes:
        return sizes[spec.dtype], spec.dtype
    return 2, "checkpoint (assumed 16-bit)"
