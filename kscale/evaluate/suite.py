"""EvalSuite: a fixed set of evaluations, prepared once and run on many quantized cells.

A sweep job loads one model, quantizes it many times and evaluates each cell. The suite
therefore does all model-independent work once: it loads and tokenizes each corpus (with a
disk cache keyed by tokenizer, corpus and protocol), builds the windows and encodes the
zero-shot requests; :meth:`EvalSuite.set_reference` stores the 16-bit model's next-token
distributions once per model so every cell gets KL(p16 || pq) and top-1 agreement — cheap
proxies for ranking cells (the paper's §3 concern is precisely which cells degrade).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kscale.data.corpus import load_corpus
from kscale.evaluate.perplexity import (
    PROTOCOLS,
    PerplexityResult,
    TokenStream,
    Window,
    apply_budget,
    budget_stream,
    forward_scored,
    scored_bytes,
    summarize_rolling,
    tokenize_corpus,
)
from kscale.evaluate.specs import EvalTaskSpec, PerplexitySpec, ZeroShotSpec
from kscale.evaluate.zeroshot import (
    TASKS,
    TaskItem,
    acc_mean,
    encode_pair,
    load_task_items,
    loglikelihood,
    prefix_token_id,
    score_task,
)

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    spec: PerplexitySpec
    seqlen: int
    stream: TokenStream
    windows: list[Window]
    n_bytes: float
    ref_top1: np.ndarray | None = None
    ref_logp: object | None = None  # torch fp16 [kl_tokens, V]


@dataclass
class _PreparedTask:
    spec: ZeroShotSpec
    items: list[TaskItem]
    encoded: list[tuple[list[int], list[int]]] = field(default_factory=list)


def _bos_added(tokenizer) -> str:
    """Which special token the tokenizer prepends by default ('none' if it adds nothing)."""
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_sp) > len(without) and with_sp[0] != without[0]:
        return str(tokenizer.convert_ids_to_tokens(with_sp[0]))
    return "none"


class EvalSuite:
    """Evaluate models on perplexity specs and zero-shot tasks.

    Args:
        specs: from :func:`kscale.evaluate.eval_specs_from_config`.
        tokenizer: the model family's tokenizer (all cells of a job share it).
        data_dir: local data root (None = :func:`kscale.paths.default_data_dir`).
        cache_dir: token-stream cache root (None = no disk cache).
        device: where inputs go (None = the model's first parameter's device).
        seqlen_default: window length for specs without ``seqlen`` (the family's ``seqlen``).
        source: ``auto``/``local``/``hub`` for every dataset.
        batch_size: perplexity windows per forward pass (equal-length windows only).
        corpus_options: extra loader keywords per corpus name, e.g. ``{"toy": provider_options}``
            so the toy corpus is generated from the same language the ladder was trained on.
    """

    def __init__(self, specs: Sequence[EvalTaskSpec], tokenizer, *, data_dir=None, cache_dir=None,
                 device=None, seqlen_default: int = 2048, source: str = "auto", batch_size: int = 1,
                 corpus_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        from kscale.data.corpus import check_source

        if not specs:
            raise ValueError("an EvalSuite needs at least one perplexity or zero-shot spec; got none")
        self.specs = tuple(specs)
        self.tokenizer = tokenizer
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = device
        self.seqlen_default = int(seqlen_default)
        self.source = check_source(source)
        self.batch_size = int(batch_size)
        self.corpus_options = {k: dict(v) for k, v in (corpus_options or {}).items()}
        self._ppl: list[_Prepared] | None = None
        self._tasks: list[_PreparedTask] | None = None
        self.has_reference = False

    # ------------------------------------------------------------------ identity

    def _seqlen(self, spec: PerplexitySpec) -> int:
        return spec.seqlen or self.seqlen_default

    def identity(self) -> dict[str, str]:
        """``eval_<dataset|task>`` -> protocol name/version and settings, for result rows."""
        out: dict[str, str] = {}
        bos = None
        for spec in self.specs:
            if isinstance(spec, PerplexitySpec):
                proto = PROTOCOLS.get(spec.protocol)
                parts = [f"{proto.name}/{proto.version}", f"split={spec.split}", f"seqlen={self._seqlen(spec)}"]
                if spec.protocol == "sliding":
                    parts.append(f"stride={spec.stride or max(1, self._seqlen(spec) // 2)}")
                parts += [f"max_tokens={spec.max_tokens}", f"max_windows={spec.max_windows}"]
                if proto.level == "joined":
                    bos = bos or _bos_added(self.tokenizer)
                    parts.append(f"bos={bos}")
                else:
                    parts.append(f"prefix={self.tokenizer.convert_ids_to_tokens(prefix_token_id(self.tokenizer))}")
                parts.append(f"kl={'on' if spec.kl else 'off'}" + (f"({spec.kl_max_tokens})" if spec.kl else ""))
                out[f"eval_{spec.dataset}"] = " ".join(parts)
            else:
                task = TASKS.get(spec.task)
                out[f"eval_{spec.task}"] = f"{task.name}/{task.version} limit={spec.limit}"
        out["eval_source"] = self.source
        return out

    # ------------------------------------------------------------------ preparation

    def prepare(self, progress: bool = False) -> None:
        """Load and tokenize every dataset, build windows and encode zero-shot requests (once)."""
        if self._ppl is not None:
            return
        ppl: list[_Prepared] = []
        for spec in self.specs:
            if not isinstance(spec, PerplexitySpec):
                continue
            proto = PROTOCOLS.get(spec.protocol)
            seqlen = self._seqlen(spec)
            t0 = time.perf_counter()
            corpus = load_corpus(spec.dataset, data_dir=self.data_dir, split=spec.split, source=self.source,
                                 path=spec.path, **self.corpus_options.get(spec.dataset, {}))
            stream = tokenize_corpus(self.tokenizer, corpus, proto, cache_dir=self.cache_dir)
            stream = budget_stream(stream, proto, spec.max_tokens)
            windows = proto.make_windows(stream, seqlen, spec.stride, prefix_token_id(self.tokenizer))
            windows = apply_budget(windows, stream, proto, spec.max_tokens, spec.max_windows)
            if not windows:
                raise ValueError(
                    f"perplexity on {spec.dataset!r} with protocol {spec.protocol!r}: no window fits; the "
                    f"stream has {len(stream.ids)} tokens (max_tokens={spec.max_tokens}) and seqlen={seqlen} "
                    f"(gptq needs at least seqlen tokens)"
                )
            log.info("%s/%s: %d tokens, %d windows (%.1f s)", spec.dataset, spec.protocol, len(stream.ids),
                     len(windows), time.perf_counter() - t0)
            ppl.append(_Prepared(spec, seqlen, stream, windows, scored_bytes(stream, windows, proto)))
        tasks: list[_PreparedTask] = []
        for spec in self.specs:
            if isinstance(spec, ZeroShotSpec):
                items = load_task_items(spec.task, data_dir=self.data_dir, source=self.source, limit=spec.limit)
                enc = [encode_pair(self.tokenizer, r.context, r.continuation) for it in items for r in it.requests]
                tasks.append(_PreparedTask(spec, items, enc))
        self._ppl, self._tasks = ppl, tasks

    def _check_context(self, model) -> int | None:
        from kscale.models.loading import model_context

        ctx = model_context(model)
        for p in self._ppl or []:
            if ctx is not None and p.seqlen > ctx:
                raise ValueError(
                    f"perplexity seqlen must be <= the model's context ({ctx} positions); got seqlen={p.seqlen} "
                    f"for {p.spec.dataset!r}"
                )
        return ctx

    # ------------------------------------------------------------------ reference (16-bit)

    def set_reference(self, model, progress: bool = True) -> dict[str, float]:
        """Store the (unquantized) model's next-token distributions for KL / top-1.

        Keeps the argmax of every scored token and fp16 log-probabilities of the first
        ``kl_max_tokens`` scored tokens per spec. Returns the model's own metrics (its KL is 0),
        so the 16-bit row needs no second pass.
        """
        import torch

        self.prepare()
        self._check_context(model)
        out: dict[str, float] = {}
        for p in self._ppl:
            if not p.spec.kl:
                continue
            top1, logps, kept = [], [], 0
            nll = []
            for _, logits, targets in forward_scored(model, p.windows, device=self.device,
                                                     batch_size=self.batch_size, progress=progress,
                                                     desc=f"reference {p.spec.dataset}"):
                logp = torch.log_softmax(logits, dim=-1)
                nll.append((-logp.gather(1, targets[:, None])[:, 0]).double().cpu().numpy())
                top1.append(logp.argmax(-1).to(torch.int32).cpu().numpy())
                if kept < p.spec.kl_max_tokens:
                    take = min(p.spec.kl_max_tokens - kept, logp.shape[0])
                    logps.append(logp[:take].clamp_min(-6e4).to(torch.float16).cpu())
                    kept += take
            p.ref_top1 = np.concatenate(top1)
            p.ref_logp = torch.cat(logps) if logps else None
            res = self._result(p, np.concatenate(nll))
            out.update(self._ppl_metrics(p, res))
            out[f"kl_{p.spec.dataset}"] = 0.0
            out[f"top1_{p.spec.dataset}"] = 1.0
        self.has_reference = True
        return out

    def clear_reference(self) -> None:
        for p in self._ppl or []:
            p.ref_top1 = p.ref_logp = None
        self.has_reference = False

    # ------------------------------------------------------------------ run

    def _result(self, p: _Prepared, nll: np.ndarray) -> PerplexityResult:
        res = PerplexityResult(nll, p.n_bytes, len(p.windows))
        if PROTOCOLS.get(p.spec.protocol).level == "document":
            summarize_rolling(res, p.stream, p.windows)
        return res

    @staticmethod
    def _ppl_metrics(p: _Prepared, res: PerplexityResult) -> dict[str, float]:
        ds = p.spec.dataset
        m = {f"nll_{ds}": res.nll, f"ppl_{ds}": res.ppl if res.nll < 700 else math.inf,
             f"bpb_{ds}": res.bpb, f"ntok_{ds}": float(res.ntok), f"nwin_{ds}": float(res.n_windows)}
        if res.word_ppl is not None:
            m[f"word_ppl_{ds}"] = res.word_ppl
            m[f"byte_ppl_{ds}"] = res.byte_ppl
        return m

    def run(self, model, progress: bool = True) -> dict[str, float]:
        """All metrics for ``model``: ``{metric}_{dataset}`` plus ``acc_mean``/``acc_mean_stderr``."""
        import torch

        self.prepare()
        ctx = self._check_context(model)
        metrics: dict[str, float] = {}
        for p in self._ppl:
            use_ref = p.spec.kl and p.ref_top1 is not None
            nll, agree, kls, pos = [], 0, [], 0
            for _, logits, targets in forward_scored(model, p.windows, device=self.device,
                                                     batch_size=self.batch_size, progress=progress,
                                                     desc=f"{p.spec.dataset}/{p.spec.protocol}"):
                n = logits.shape[0]
                if not use_ref:
                    nll.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none")
                               .double().cpu().numpy())
                    continue
                logq = torch.log_softmax(logits, dim=-1)
                nll.append((-logq.gather(1, targets[:, None])[:, 0]).double().cpu().numpy())
                ref_top = torch.as_tensor(p.ref_top1[pos : pos + n], device=logq.device)
                agree += int((logq.argmax(-1).to(torch.int32) == ref_top).sum())
                if p.ref_logp is not None and pos < p.ref_logp.shape[0]:
                    take = min(p.ref_logp.shape[0] - pos, n)
                    ref = p.ref_logp[pos : pos + take].to(logq.device, torch.float32)
                    ref = ref - torch.logsumexp(ref, dim=-1, keepdim=True)  # undo fp16 rounding: KL >= 0
                    kls.append((ref.exp() * (ref - logq[:take])).sum(-1).double().cpu().numpy())
                pos += n
            res = self._result(p, np.concatenate(nll))
            metrics.update(self._ppl_metrics(p, res))
            if use_ref:
                metrics[f"top1_{p.spec.dataset}"] = agree / res.ntok
                if kls:
                    metrics[f"kl_{p.spec.dataset}"] = float(np.concatenate(kls).mean())
        task_names = []
        for t in self._tasks:
            task = TASKS.get(t.spec.task)
            max_length = ctx or self.seqlen_default
            results = loglikelihood(model, t.encoded, max_length=max_length, device=self.device,
                                    progress=progress, desc=t.spec.task)
            metrics.update(score_task(task, t.items, results))
            task_names.append(t.spec.task)
        if task_names:
            metrics.update(acc_mean(metrics, task_names))
        return metrics
