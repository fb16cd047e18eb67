"""What a sweep will cost before it runs: jobs, cells, tokens, FLOPs, GPU-hours, memory, disk.

``python run_sweep.py <any sweep> plan=true`` builds the same validated :class:`SweepPlan` s a
real launch would, then calls :func:`estimate_plans` instead of launching: no weights are
loaded and nothing is written (``plan_out=PATH`` writes the JSON the table shows). The numbers
come from three places, each named in the output so a reader knows how far to trust them:

* **cells**: the job's grid (``plan.cells``) against the study's finished keys (resume-aware:
  exactly the keys ``run_job`` would skip), so "to run" is what a launch would do.
* **tokens per cell**: the evaluation's own windowing code applied to the local data
  (``kscale.evaluate.perplexity``: windows of the protocol, tokens the model reads =
  ``len(window) - 1`` each) and every zero-shot request (context + continuation, left-truncated
  at the model context, as ``loglikelihood`` feeds them), tokenized with the family's tokenizer
  when one is available offline (the checkpoint folder, the shared tokenizer files, the toy
  language); otherwise GPT-2's BPE stands in and the count is marked approximate.
* **FLOPs**: forward FLOPs ~= 2 * n_params * tokens read (Kaplan et al. 2020, eq. 2.2: a
  multiply-add per parameter per token), except that the LM head is charged only at scored
  positions where its size is known from a local/provider architecture (the evaluation computes
  logits only there; zero-shot contexts are read, not scored). It leaves out the attention-score
  products (~4 * n_layer * seqlen * d_model per token: ~30 % on top for OPT-125m at 2048 tokens,
  ~3 % for OPT-175B) and padding, so small models are underestimated; the totals are dominated
  by the large ones. A sweep job runs the 16-bit reference pass once (it is also the baseline
  cell's evaluation) and one evaluation per quantized cell; calibrated methods add passes over
  their calibration tokens (``QuantMethod.calibration_passes``). ``n_params`` comes from a local
  ``config.json`` counted on the meta device when the checkpoint is local, else from the
  family's ``model.n_params`` table (published configs, so no download).

Hours = FLOPs / the device profile's sustained rate (:data:`DEVICES`, overridable with
``plan_devices`` in config), or the rate measured by timing one window of the smallest model on
this machine (``plan_probe=true``, the only option that loads weights).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kscale.registry import Registry

log = logging.getLogger(__name__)

GIB = 2**30


# ----------------------------------------------------------------------------- devices

@dataclass(frozen=True)
class DeviceProfile:
    """A device for the hour and memory estimates.

    Attributes:
        name: ``plan_device`` value.
        tflops16 / tflops32: *sustained* dense TFLOP/s for 16-bit and 32-bit weights in this
            workload (batch-1, long-sequence forward passes): an assumption, not a datasheet
            figure; ``plan_probe=true`` measures it instead.
        mem_gb: memory of one device (GiB).
        description: where the numbers come from.
    """

    name: str
    tflops16: float
    tflops32: float
    mem_gb: float
    description: str = ""

    def rate(self, model_dtype: str) -> float:
        """Sustained FLOP/s for weights stored as ``model_dtype``."""
        return (self.tflops32 if model_dtype == "float32" else self.tflops16) * 1e12


DEVICES: Registry[DeviceProfile] = Registry("plan device")
# Sustained = ~40 % of the dense tensor-core peak (fp16/bf16; TF32 for fp32) of the SXM parts,
# a typical model-FLOP utilisation for inference forward passes of 2048-token windows.
DEVICES.register("h100", DeviceProfile("h100", 400.0, 200.0, 80.0,
                                       "H100 SXM 80GB: 989 dense fp16 TFLOP/s peak x 0.4"))
DEVICES.register("h200", DeviceProfile("h200", 400.0, 200.0, 141.0,
                                       "H200 141GB: H100 compute x 0.4, more memory"))
DEVICES.register("a100", DeviceProfile("a100", 125.0, 62.0, 80.0,
                                       "A100 SXM 80GB: 312 dense fp16 TFLOP/s peak x 0.4"))
DEVICES.register("a100-40gb", DeviceProfile("a100-40gb", 125.0, 62.0, 40.0,
                                            "A100 40GB: 312 dense fp16 TFLOP/s peak x 0.4"))
DEVICES.register("v100", DeviceProfile("v100", 50.0, 6.0, 32.0,
                                       "V100 32GB: 125 fp16 tensor TFLOP/s peak x 0.4; fp32 15.7 x 0.4"))
DEVICES.register("cpu", DeviceProfile("cpu", 0.05, 0.1, 0.0,
                                      "a small multi-core server CPU (fp32 GEMM ~100 GFLOP/s, "
                                      "fp16 slower); memory = this machine's RAM; prefer plan_probe"))


def device_profile(name: str, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> DeviceProfile:
    """The profile ``name``: ``overrides[name]`` (config ``plan_devices``) over :data:`DEVICES`."""
    overrides = dict(overrides or {})
    if name in overrides:
        base = DEVICES.get(name) if name in DEVICES else DeviceProfile(name, 0.0, 0.0, 0.0)
        extra = dict(overrides[name])
        unknown = sorted(set(extra) - {"tflops16", "tflops32", "mem_gb", "description"})
        if unknown:
            raise ValueError(f"plan_devices.{name}: unknown keys {unknown}; allowed tflops16, tflops32, "
                             "mem_gb, description")
        prof = replace(base, **{k: (float(v) if k != "description" else str(v)) for k, v in extra.items()})
    else:
        prof = DEVICES.get(name)  # unknown -> did-you-mean error
    if prof.name == "cpu" and prof.mem_gb <= 0:
        prof = replace(prof, mem_gb=_host_memory_gb())
    if prof.tflops16 <= 0 or prof.tflops32 <= 0:
        raise ValueError(f"plan device {name!r}: tflops16 and tflops32 must be > 0; got {prof}")
    return prof


def _host_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 0.0


# ----------------------------------------------------------------------------- methods

#: Calibration cost in forward-pass equivalents per calibration token is the method's own
#: ``QuantMethod.calibration_passes`` (GPTQ 3.75: two block passes plus the Hessian products;
#: AWQ 1: one 16-bit pass, its alpha search works on d_in x d_in Gram matrices).


def _method(name: str):
    try:
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


# ----------------------------------------------------------------------------- tokens

@dataclass(frozen=True)
class EvalTokens:
    """Tokens the model reads for one evaluation of one cell.

    Attributes:
        per_task: ``{dataset or task: tokens read}``.
        windows: ``{dataset: perplexity windows}``.
        scored: ``{dataset or task: tokens whose next-token logits are computed}``.
        tokenizer: which tokenizer counted them.
        exact: False when a stand-in tokenizer (GPT-2 BPE) counted for an unavailable one.
        missing: datasets/tasks that are not available locally (not counted).
    """

    per_task: Mapping[str, int]
    windows: Mapping[str, int]
    scored: Mapping[str, int]
    tokenizer: str
    exact: bool
    missing: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return int(sum(self.per_task.values()))

    @property
    def total_scored(self) -> int:
        return int(sum(self.scored.values()))


def _toy_tokenizer(plan: Any, spec: Any):
    from kscale.toy.ladder import ToyOptions, data_source
    from kscale.toy.tokenizer import build_tokenizer

    return build_tokenizer(data_source(ToyOptions.from_mapping(plan.provider_options)).words)


def _shared(builder_name: str):
    def build(plan: Any, spec: Any):
        from kscale.models import tokenizers

        return getattr(tokenizers, builder_name)(plan.data_dir)

    return build


#: Offline tokenizers per family (or provider), for families whose checkpoint is not local.
PLAN_TOKENIZERS: Registry[Any] = Registry("plan tokenizer")
PLAN_TOKENIZERS.register("toy", _toy_tokenizer)
PLAN_TOKENIZERS.register("opt", _shared("opt_tokenizer"))
PLAN_TOKENIZERS.register("gpt2", _shared("gpt2_tokenizer"))
PLAN_TOKENIZERS.register("pythia", _shared("neox_tokenizer"))
PLAN_TOKENIZERS.register("pythia-deduped", _shared("neox_tokenizer"))


def plan_tokenizer(plan: Any, spec: Any) -> tuple[Any, str, bool]:
    """``(tokenizer, label, exact)`` for counting the tokens of ``spec`` without the hub."""
    from kscale.models import get_family

    folder = _local_folder(plan, spec)
    if folder is not None and any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                      "vocab.json")):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True), f"checkpoint:{folder.name}", True
    family = get_family(spec.family)
    for name in (family.provider, spec.family):
        if name and name in PLAN_TOKENIZERS:
            return PLAN_TOKENIZERS.get(name)(plan, spec), name, True
    try:  # the local Hugging Face cache, if the checkpoint was downloaded before
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec.checkpoint, local_files_only=True)
        return tok, f"hf-cache:{spec.checkpoint}", True
    except Exception:  # noqa: BLE001 - not cached: fall back to a stand-in
        pass
    from kscale.models.tokenizers import gpt2_tokenizer

    return gpt2_tokenizer(plan.data_dir), "gpt2 (stand-in)", False


_TOKEN_CACHE: dict[tuple, EvalTokens] = {}
_TOKENIZERS: dict[tuple, tuple[Any, str, bool]] = {}


def _cached_tokenizer(plan: Any, spec: Any) -> tuple[Any, str, bool]:
    key = (spec.family, str(spec.local_path), spec.checkpoint, str(plan.data_dir),
           json.dumps(dict(plan.provider_options), sort_keys=True, default=str))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = plan_tokenizer(plan, spec)
    return _TOKENIZERS[key]


def eval_tokens(plan: Any, spec: Any) -> EvalTokens:
    """Tokens one evaluation of ``plan.eval`` reads on ``spec``'s model (see the module doc)."""
    from kscale.evaluate.specs import PerplexitySpec
    from kscale.models import get_family

    family = get_family(spec.family)
    tokenizer, label, exact = _cached_tokenizer(plan, spec)
    key = (label, str(spec.local_path), plan.eval.config_json, family.seqlen, str(plan.data_dir),
           json.dumps(dict(plan.provider_options), sort_keys=True, default=str) if family.provider else "")
    if key in _TOKEN_CACHE:
        return _TOKEN_CACHE[key]
    disk = _token_cache_file(plan, tokenizer, key)
    if disk is not None and disk.is_file():
        try:
            data = json.loads(disk.read_text())
            out = EvalTokens(data["per_task"], data["windows"], data["scored"], data["tokenizer"],
                             data["exact"], tuple(data["missing"]))
            _TOKEN_CACHE[key] = out
            return out
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is recounted
    per_task: dict[str, int] = {}
    windows: dict[str, int] = {}
    scored: dict[str, int] = {}
    missing: list[str] = []
    for s in plan.eval.specs:
        try:
            if isinstance(s, PerplexitySpec):
                key_ = getattr(s, "key", s.dataset)
                windows[key_], per_task[key_], scored[key_] = _ppl_tokens(plan, family, tokenizer, s)
            else:
                per_task[s.task], scored[s.task] = _zeroshot_tokens(plan, family, tokenizer, s, spec)
        except (FileNotFoundError, OSError, ValueError) as err:
            name = getattr(s, "dataset", None) or getattr(s, "task", "?")
            log.warning("plan: %s not counted (%s)", name, err)
            missing.append(name)
    out = EvalTokens(per_task, windows, scored, label, exact, tuple(missing))
    _TOKEN_CACHE[key] = out
    if disk is not None and not missing:
        try:  # counting the zero-shot requests of four tasks takes about a minute per tokenizer
            disk.parent.mkdir(parents=True, exist_ok=True)
            tmp = disk.with_suffix(".tmp")
            tmp.write_text(json.dumps({"per_task": per_task, "windows": windows, "scored": scored,
                                       "tokenizer": label, "exact": exact, "missing": list(missing)}))
            tmp.replace(disk)
        except OSError:
            pass
    return out


def _token_cache_file(plan: Any, tokenizer: Any, key: tuple):
    """Where the token counts of one (tokenizer, eval) live in the cache dir (None without one)."""
    import hashlib

    from kscale.evaluate.perplexity import tokenizer_fingerprint

    if getattr(plan, "cache_dir", None) is None:
        return None
    digest = hashlib.sha256(json.dumps([tokenizer_fingerprint(tokenizer), *map(str, key)]).encode()).hexdigest()
    return Path(plan.cache_dir) / "plan-tokens" / f"{digest[:24]}.json"


def _corpus_options(plan: Any, family: Any, dataset: str) -> dict[str, Any]:
    return dict(plan.provider_options) if family.provider and family.provider == dataset else {}


def _ppl_tokens(plan, family, tokenizer, s) -> tuple[int, int, int]:
    """The protocol's windows on the local corpus: ``(windows, tokens read = sum(len - 1),
    tokens scored = sum(n_pred))``."""
    from kscale.data.corpus import load_corpus
    from kscale.evaluate.perplexity import PROTOCOLS, apply_budget, budget_stream, tokenize_corpus
    from kscale.evaluate.zeroshot import prefix_token_id

    proto = PROTOCOLS.get(s.protocol)
    seqlen = s.seqlen or family.seqlen
    corpus = load_corpus(s.dataset, data_dir=plan.data_dir, split=s.split, source="local", path=s.path,
                         **_corpus_options(plan, family, s.dataset))
    # the same on-disk token cache as the evaluation itself, so planning then running tokenizes once
    stream = budget_stream(tokenize_corpus(tokenizer, corpus, proto, cache_dir=plan.cache_dir), proto, s.max_tokens)
    try:
        prefix = prefix_token_id(tokenizer)
    except ValueError:
        prefix = None
    wins = apply_budget(proto.make_windows(stream, seqlen, s.stride, prefix), stream, proto,
                        s.max_tokens, s.max_windows)
    return len(wins), int(sum(len(w.ids) - 1 for w in wins)), int(sum(w.n_pred for w in wins))


def _zeroshot_tokens(plan, family, tokenizer, s, spec) -> tuple[int, int]:
    """``(tokens read, tokens scored)`` over every request, as ``encode_pair`` splits it and
    ``request_window`` left-truncates it at the model context."""
    from kscale.evaluate.zeroshot import load_task_items

    items = load_task_items(s.task, data_dir=plan.data_dir, source="local", limit=s.limit)
    reqs = [r for it in items for r in it.requests]
    enc = lambda texts: [len(i) for i in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []  # noqa: E731
    full = [r for r in reqs if r.context]
    # encode_pair: trailing whitespace of the context moves to the continuation
    whole = enc([r.context + r.continuation for r in full])
    ctx = enc([r.context.rstrip() if r.context != r.context.rstrip() else r.context for r in full])
    pairs = [(c, w - c) for c, w in zip(ctx, whole)]
    pairs += [(1, n) for n in enc([r.continuation for r in reqs if not r.context])]  # BOS stands in
    max_len = _model_context(plan, family, spec)
    read = sum(min(c + n, max_len + 1) - 1 for c, n in pairs)
    return int(read), int(sum(n for _, n in pairs))


def _model_context(plan, family, spec) -> int:
    """Zero-shot truncation length: the local config's context (as ``max_length_of`` reads it
    from the loaded model), else the family's sequence length."""
    folder = _local_folder(plan, spec)
    if folder is not None:
        cfg = json.loads((folder / "config.json").read_text())
        for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            if isinstance(cfg.get(attr), int) and cfg[attr] > 0:
                return int(cfg[attr])
    return int(family.seqlen)


# ----------------------------------------------------------------------------- jobs

@dataclass(frozen=True)
class JobEstimate:
    """One job (family x size x revision) of the sweep; sizes in bytes, compute in FLOPs."""

    family: str
    size: str
    revision: str | None
    checkpoint: str
    n_params: int | None
    n_params_source: str
    cells: int
    finished: int
    tokens_per_cell: int
    tokens: Mapping[str, int]
    tokenizer: str
    tokens_exact: bool
    calib_tokens_per_cell: int
    passes: int
    eval_flops: float | None
    calib_flops: float | None
    hours: float | None
    weights_dtype: str
    weights_gb: float | None
    snapshot_gb: float | None
    reference_gb: float | None
    activations_gb: float | None
    mem_gb: float | None
    devices_needed: int | None
    needs_device_map: bool
    disk_bytes: int
    notes: tuple[str, ...] = ()

    @property
    def to_run(self) -> int:
        return self.cells - self.finished

    @property
    def flops(self) -> float | None:
        if self.eval_flops is None:
            return None
        return self.eval_flops + (self.calib_flops or 0.0)

    @property
    def name(self) -> str:
        return f"{self.family}-{self.size}" + (f"@{self.revision}" if self.revision else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(to_run=self.to_run, flops=self.flops, name=self.name)
        d["notes"] = list(self.notes)
        d["tokens"] = dict(self.tokens)
        return d


#: Bytes of one result row on disk (JSON line): measured ~1.8 kB for a toy row with one
#: perplexity dataset; every further dataset/task adds its metrics and protocol string.
ROW_BYTES_BASE = 1500
ROW_BYTES_PER_EVAL = 350


def _finished(plan: Any, spec: Any, done: set[str]) -> int:
    from kscale.results import row_key
    from kscale.sweep.job import cell_identity

    if plan.rerun:
        return 0
    return sum(row_key(cell_identity(plan, spec, c)) in done for c in plan.cells)


def estimate_job(plan: Any, spec: Any, device: DeviceProfile, *, rate: float | None = None,
                 done: set[str] | None = None) -> JobEstimate:
    """The cost of running ``plan``'s cells on ``spec`` (only the unfinished ones count)."""
    from kscale.models import get_family
    from kscale.results import ResultStore

    family = get_family(spec.family)
    notes: list[str] = []
    if done is None:
        done = ResultStore(plan.study_dir).finished_keys()
    finished = _finished(plan, spec, done)
    todo_cells = [c for c in plan.cells]
    if finished:
        from kscale.results import row_key
        from kscale.sweep.job import cell_identity

        todo_cells = [c for c in plan.cells if row_key(cell_identity(plan, spec, c)) not in done]
    n_params, n_source = n_params_for(plan, spec)
    toks = eval_tokens(plan, spec)
    if not toks.exact:
        notes.append(f"tokens counted with {toks.tokenizer}: approximate")
    if toks.missing:
        notes.append(f"not available locally, not counted: {', '.join(toks.missing)}")
    calib = [calibration_tokens(c, family.seqlen) for c in todo_cells]
    calib_per_cell = max(calib) if calib else 0
    # forward passes: the 16-bit reference (= the baseline's evaluation) once, if anything runs,
    # then one evaluation per quantized cell
    n_quant = sum(not c.is_baseline for c in todo_cells)
    eval_passes = (1 + n_quant) if todo_cells else 0
    calib_passes = 0.0
    for c, t in zip(todo_cells, calib):
        if t:
            factor = getattr(_method(c.method), "calibration_passes", None)
            if factor is None:
                notes.append(f"method {c.method}: calibration cost unknown, counted as one forward pass")
                factor = 1.0
            calib_passes += factor * t
    bpp, dtype_label = weight_bytes_per_param(plan, spec, device)
    tok, _, tok_exact = _cached_tokenizer(plan, spec)
    vocab = vocab_size_for(plan, spec, tok if tok_exact else None)
    if n_params is None:
        notes.append(n_source)
        eval_flops = calib_flops = hours = None
        weights = snapshot = None
    else:
        eval_flops = forward_flops(n_params, toks.total, scored=toks.total_scored,
                                   head_params=head_params_for(plan, spec)) * eval_passes
        calib_flops = forward_flops(n_params, calib_passes)
        r = rate if rate is not None else device.rate("float32" if bpp == 4 else "float16")
        hours = (eval_flops + calib_flops) / r / 3600.0
        weights = n_params * bpp / GIB
        # WeightSnapshot keeps the quantized linears' 16-bit weights on the model's device:
        # bounded by the weights (embeddings are not copied); counted at the bound
        snapshot = weights if n_quant else 0.0
    reference = activations = None
    from kscale.evaluate.specs import PerplexitySpec

    ppl_specs = [s for s in plan.eval.specs if isinstance(s, PerplexitySpec)]
    if vocab is not None:
        # the reference pass keeps fp16 log-probs of kl_max_tokens scored tokens per dataset
        reference = sum(s.kl_max_tokens * vocab * 2 for s in ppl_specs if s.kl) / GIB
        seqlen = max([s.seqlen or family.seqlen for s in ppl_specs] or [family.seqlen])
        # one forward's logits in the model dtype plus the float32 copy of one window
        activations = (plan.eval.batch_size * seqlen * vocab * bpp + seqlen * vocab * 4) / GIB
    else:
        notes.append("vocab size unknown (no local tokenizer or config.json): reference log-probs "
                     "and logits not counted")
    mem = None
    if weights is not None:
        mem = weights + (snapshot or 0.0) + (reference or 0.0) + (activations or 0.0)
    devices_needed = None
    needs_map = False
    if mem is not None and device.mem_gb > 0:
        usable = 0.9 * device.mem_gb
        devices_needed = max(1, math.ceil(mem / usable))
        needs_map = devices_needed > 1
        if needs_map and not spec.device_map:
            notes.append(f"needs ~{mem:.0f} GiB > {usable:.0f} GiB usable on one {device.name}: "
                         f"set model.device_map=auto over {devices_needed} devices")
    disk = len(todo_cells) * (ROW_BYTES_BASE + ROW_BYTES_PER_EVAL * len(plan.eval.specs))
    if "assumed" in dtype_label:
        notes.append("model.dtype=checkpoint with no local config: weights assumed 16-bit")
    return JobEstimate(
        family=spec.family, size=spec.size, revision=getattr(spec, "revision", None),
        checkpoint=spec.checkpoint, n_params=n_params, n_params_source=n_source,
        cells=len(plan.cells), finished=finished, tokens_per_cell=toks.total, tokens=dict(toks.per_task),
        tokenizer=toks.tokenizer, tokens_exact=toks.exact, calib_tokens_per_cell=calib_per_cell,
        passes=eval_passes, eval_flops=eval_flops, calib_flops=calib_flops, hours=hours, weights_dtype=dtype_label, weights_gb=weights,
        snapshot_gb=snapshot, reference_gb=reference, activations_gb=activations, mem_gb=mem,
        devices_needed=devices_needed, needs_device_map=needs_map, disk_bytes=disk, notes=tuple(notes),
    )


# ----------------------------------------------------------------------------- the whole sweep

@dataclass(frozen=True)
class PlanEstimate:
    """Every job of a sweep plus totals and a launcher suggestion."""

    jobs: tuple[JobEstimate, ...]
    device: DeviceProfile
    rate_source: str
    studies: tuple[str, ...]
    probe: Mapping[str, Any] | None = None

    @property
    def totals(self) -> dict[str, Any]:
        jobs = self.jobs
        known = [j for j in jobs if j.flops is not None]
        pending = [j for j in jobs if j.to_run]
        hours = [j.hours for j in pending if j.hours is not None]
        return {
            "jobs": len(jobs),
            "jobs_to_run": len(pending),
            "cells": sum(j.cells for j in jobs),
            "finished": sum(j.finished for j in jobs),
            "to_run": sum(j.to_run for j in jobs),
            "tokens": sum(j.tokens_per_cell * j.to_run for j in jobs),
            "calib_tokens": sum(j.calib_tokens_per_cell * j.to_run for j in jobs),
            "flops": sum(j.flops for j in known),
            "hours": sum(hours),
            # a job sharded with device_map=auto holds all its devices for its whole run
            "allocated_device_hours": sum(j.hours * (j.devices_needed or 1) for j in pending if j.hours is not None),
            "max_job_hours": max(hours) if hours else 0.0,
            "unknown_cost_jobs": [j.name for j in jobs if j.flops is None and j.to_run],
            "disk_bytes": sum(j.disk_bytes for j in jobs),
            "device_map_jobs": [j.name for j in pending if j.needs_device_map],
        }

    @property
    def launcher(self) -> dict[str, Any]:
        """Launcher settings that spread the pending jobs: one array task per job."""
        t = self.totals
        n = t["jobs_to_run"]
        gpus = max([j.devices_needed or 1 for j in self.jobs if j.to_run] or [1])
        timeout_min = max(10, math.ceil(t["max_job_hours"] * 60 * 1.5))
        return {
            "jobs": n,
            "array_parallelism": n,
            "max_gpus_per_job": gpus,
            "timeout_min": timeout_min,
            "command": (f"hydra/launcher=submitit_slurm hydra.launcher.array_parallelism={n} "
                        f"hydra.launcher.timeout_min={timeout_min}"
                        + (f" hydra.launcher.gpus_per_node={gpus}" if gpus > 1 else "")),
            "local": "hydra/launcher=joblib hydra.launcher.n_jobs=<workers>",
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "studies": list(self.studies),
            "device": asdict(self.device),
            "rate_source": self.rate_source,
            "probe": dict(self.probe) if self.probe else None,
            "flop_model": "2 * n_params * tokens per forward (attention scores not counted)",
            "jobs": [j.to_dict() for j in self.jobs],
            "totals": self.totals,
            "launcher": self.launcher,
        }

    def table(self) -> str:
        """The plain-text table ``plan=true`` prints."""
        head = ("job", "params", "cells", "done", "to run", "tok/cell", "calib/cell", "PFLOP", "hours",
                "mem GiB", "dev")
        rows = []
        for j in self.jobs:
            rows.append((
                j.name, _si(j.n_params), str(j.cells), str(j.finished), str(j.to_run),
                _si(j.tokens_per_cell) + ("" if j.tokens_exact else "~"), _si(j.calib_tokens_per_cell),
                "?" if j.flops is None else f"{j.flops / 1e15:.3g}",
                "?" if j.hours is None else f"{j.hours:.3g}",
                "?" if j.mem_gb is None else f"{j.mem_gb:.3g}",
                "?" if j.devices_needed is None else (f"{j.devices_needed}*" if j.needs_device_map else "1"),
            ))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        line = lambda cols: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cols, widths)))
        out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
        t = self.totals
        rate = (f"{self.device.name} profile ({self.device.tflops16:g}/{self.device.tflops32:g} sustained "
                f"TFLOP/s for 16/32-bit weights)" if self.rate_source == "profile"
                else f"probe on this machine ({self.probe.get('tflops', 0):.3g} TFLOP/s measured)")
        out += [
            "",
            f"total: {t['jobs']} jobs ({t['jobs_to_run']} to run), {t['cells']} cells, {t['finished']} "
            f"finished, {t['to_run']} to run; {_si(t['tokens'])} eval tokens + {_si(t['calib_tokens'])} "
            f"calibration tokens; {t['flops'] / 1e18:.3g} EFLOP; {t['hours']:.4g} device-hours of compute, "
            f"{t['allocated_device_hours']:.4g} allocated (sharded jobs hold every device; longest job "
            f"{t['max_job_hours']:.3g} h) at {rate}; rows ~{t['disk_bytes'] / 1e6:.3g} MB",
        ]
        if t["unknown_cost_jobs"]:
            out.append(f"unknown cost (no n_params): {', '.join(t['unknown_cost_jobs'])}")
        if t["device_map_jobs"]:
            out.append(f"more than one {self.device.name} (model.device_map=auto): "
                       f"{', '.join(t['device_map_jobs'])}")
        la = self.launcher
        out.append(f"spread it: {la['command']}   (or locally: {la['local']})")
        by_note: dict[str, list[str]] = {}
        for j in self.jobs:
            for n in j.notes:
                by_note.setdefault(n, []).append(j.name)
        if by_note:
            out.append("notes:")
            out += [f"  {', '.join(names)}: {n}" for n, names in sorted(by_note.items(), key=lambda kv: kv[1][0])]
        out.append("(~ = tokens counted with a stand-in tokenizer; FLOPs = 2 * n_params per token read, the LM "
                   "head only at scored tokens where its size is known; attention scores and padding not "
                   "counted; * = needs device_map=auto)")
        return "\n".join(out)


def _si(n: float | int | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def plan_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``plan*`` keys of a config (defaults when absent): plan, plan_out, plan_device, ..."""
    get = cfg.get
    return {
        "plan": bool(get("plan", False)),
        "plan_out": get("plan_out", None),
        "plan_device": get("plan_device", None),
        "plan_probe": bool(get("plan_probe", False)),
        "plan_devices": dict(get("plan_devices", None) or {}),
    }


def local_device_name(device: str) -> str:
    """The :data:`DEVICES` profile for a model device string: ``cpu``, or the CUDA device's
    name matched against the profiles (``NVIDIA H100 80GB HBM3`` -> ``h100``), else ``a100``."""
    if not str(device).startswith("cuda"):
        return "cpu"
    try:
        import torch

        label = torch.cuda.get_device_name(torch.device(device)).lower().replace(" ", "")
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory / GIB
    except Exception:  # noqa: BLE001 - no CUDA here: a planning default
        return "a100"
    matches = [n for n in DEVICES.names() if n.split("-")[0] in label and n != "cpu"]
    if not matches:
        return "a100"
    return min(matches, key=lambda n: abs(DEVICES.get(n).mem_gb - total))


def estimate_plans(plans: Sequence[Any], *, device: str | None = None,
                   devices: Mapping[str, Mapping[str, Any]] | None = None, probe: bool = False,
                   models: Iterable[tuple[Any, Any]] | None = None) -> PlanEstimate:
    """Estimate every job of ``plans`` (one ``SweepPlan`` per composed sweep combination).

    Args:
        plans: the validated plans (``kscale.config.build_plan``), nothing loaded.
        device: a :data:`DEVICES` name (or one defined in ``devices``); None = the profile of
            the device the first model would run on (:func:`local_device_name`).
        devices: config ``plan_devices`` overrides ``{name: {tflops16, tflops32, mem_gb}}``.
        probe: time one window of the smallest model on this machine and use that rate.
        models: ``(plan, model_spec)`` pairs to estimate instead of every plan's models.
    """
    pairs = list(models) if models is not None else [(p, s) for p in plans for s in p.models]
    if device is None:
        device = local_device_name(pairs[0][1].device) if pairs else "cpu"
    prof = device_profile(device, devices)
    seen: set[tuple] = set()
    unique = []
    for plan, spec in pairs:  # the same job composed twice (a sweep over a key the job ignores)
        key = (str(plan.study_dir), plan.eval.config_json, spec)
        if key not in seen:
            seen.add(key)
            unique.append((plan, spec))
    probe_info = None
    rate = None
    if probe and unique:
        probe_info = probe_rate(unique)
        rate = probe_info["tflops"] * 1e12
    done_by_study: dict[str, set[str]] = {}
    jobs = []
    from kscale.results import ResultStore

    for plan, spec in unique:
        study = str(plan.study_dir)
        if study not in done_by_study:
            done_by_study[study] = ResultStore(plan.study_dir).finished_keys()
        jobs.append(estimate_job(plan, spec, prof, rate=rate, done=done_by_study[study]))
    return PlanEstimate(tuple(jobs), prof, "probe" if probe_info else "profile",
                        tuple(dict.fromkeys(str(p.study_dir) for p in plans)), probe_info)


def probe_rate(pairs: Sequence[tuple[Any, Any]], *, repeats: int = 3) -> dict[str, Any]:
    """Time one evaluation window of the smallest model on its configured device.

    The achieved rate (2 * n_params * tokens / seconds, the same FLOP model as the estimate) then
    prices every job, so the hours include this machine's real efficiency. Loads that one model.
    """
    import torch

    from kscale.evaluate.specs import PerplexitySpec
    from kscale.models import get_family, load_model, prepare_models

    sized = [(n_params_for(p, s)[0], i) for i, (p, s) in enumerate(pairs)]
    known = [(n, i) for n, i in sized if n is not None] or [(0, 0)]
    plan, spec = pairs[min(known)[1]]
    (spec,) = prepare_models([spec], plan.provider_options)
    loaded = load_model(spec)
    family = get_family(spec.family)
    ppl = [s for s in plan.eval.specs if isinstance(s, PerplexitySpec)]
    seqlen = (ppl[0].seqlen if ppl and ppl[0].seqlen else family.seqlen)
    from kscale.models.loading import model_context

    ctx = model_context(loaded.model)
    seqlen = min(seqlen, ctx) if ctx else seqlen
    vocab = int(getattr(loaded.model.config, "vocab_size", 100) or 100)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (plan.eval.batch_size, seqlen), generator=g).to(spec.device)
    times = []
    with torch.inference_mode():
        loaded.model(input_ids=ids)  # warm-up (kernels, allocator)
        for _ in range(repeats):
            if str(spec.device).startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loaded.model(input_ids=ids)
            if str(spec.device).startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    flops = 2.0 * loaded.n_params * ids.numel()
    return {"model": f"{spec.family}-{spec.size}", "device": str(spec.device), "tokens": int(ids.numel()),
            "seconds": seconds, "n_params": loaded.n_params, "tflops": flops / seconds / 1e12}


def write_plan(estimate: PlanEstimate, path: str | os.PathLike) -> Path:
    """Write ``estimate.to_dict()`` as JSON to ``path`` (the one file ``plan_out`` asks for)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(estimate.to_dict(), indent=2, default=str) + "\n")
    return path


def report_plan(plans: Sequence[Any], settings: Mapping[str, Any],
                models: Iterable[tuple[Any, Any]] | None = None) -> tuple[PlanEstimate, str]:
    """Estimate and render: ``(estimate, text)``; writes ``plan_out`` (JSON) if set.

    The caller (``run_sweep.py``, the sweeper) prints the text: this module only logs.
    """
    est = estimate_plans(plans, device=settings["plan_device"], devices=settings.get("plan_devices"),
                         probe=settings.get("plan_probe", False), models=models)
    text = est.table()
    if settings.get("plan_out"):
        out = write_plan(est, settings["plan_out"])
        text += f"\nplan written to {out}"
    return est, text


__all__ = [
    "DEVICES", "PLAN_PARAM_COUNTERS", "PLAN_TOKENIZERS", "DeviceProfile", "EvalTokens", "JobEstimate",
    "PlanEstimate", "calibration_tokens", "device_profile", "estimate_job", "estimate_plans",
    "eval_tokens", "forward_flops", "n_params_for", "plan_settings", "plan_tokenizer", "probe_rate", "report_plan",
    "vocab_size_for", "weight_bytes_per_param", "write_plan",
]
