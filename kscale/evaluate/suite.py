"""EvalSuite: a fixed set of evaluations, prepared once and run on many quantized cells.

A sweep job loads one model, quantizes it many times and evaluates each cell. The suite
therefore does all model-independent work once: it loads and tokenizes each corpus (with a
disk cache keyed by tokenizer, corpus and protocol), builds the windows and encodes the
zero-shot requests. :meth:`EvalSuite.set_reference` is the 16-bit model's evaluation *and*
the pass that stores its next-token distributions, so every later cell gets KL(p16 || pq) and
top-1 agreement — cheap proxies for ranking cells (the paper's §3 concern is precisely which
cells degrade). Both go through one code path (:meth:`EvalSuite._evaluate`), so the baseline
row has exactly the columns of every quantized row.
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

from kscale.data.corpus import check_source, load_corpus
from kscale.evaluate.batching import BatchSize, ForwardStats, check_batch_size, forward_scored, resolve_batch_size
from kscale.evaluate.perplexity import (
    PROTOCOLS,
    PerplexityResult,
    TokenStream,
    Window,
    apply_budget,
    budget_stream,
    doc_limit,
    scored_bytes,
    summarize_rolling,
    tokenize_corpus,
)
from kscale.evaluate.paired import absolute_metrics, flip_metrics, mean_se, paired_metrics, window_starts
from kscale.evaluate.reference import TokenReference, TokenScores, score_rows
from kscale.evaluate.sequential import evaluation_order, run_until
from kscale.evaluate.specs import EvalTaskSpec, PerplexitySpec, SequentialSpec, ZeroShotSpec, check_distinct
from kscale.evaluate.zeroshot import (
    TASKS,
    TaskItem,
    acc_mean,
    encode_pair,
    item_correct,
    load_task_items,
    loglikelihood,
    prefix_token_id,
    score_task,
)
from kscale.models.loading import model_context

log = logging.getLogger(__name__)

#: lm-eval's ``HFLM._DEFAULT_MAX_LENGTH``, and the "unset" sentinel of ``tokenizer.model_max_length``
DEFAULT_MAX_LENGTH = 2048
_TOKENIZER_UNSET = 1000000000000000019884624838656
#: elements per [rows, V] temporary when scoring (4M floats = 16 MB)
_CHUNK_ELEMENTS = 1 << 22


@dataclass
class _Prepared:
    spec: PerplexitySpec
    stream: TokenStream
    seqlen: int | None = None  # None until the model's context is known (rolling, seqlen null)
    windows: list[Window] = field(default_factory=list)
    offsets: np.ndarray | None = None  # offsets[i] = first scored token of window i (window order)
    n_bytes: float = 0.0
    ref: TokenReference | None = None  # the 16-bit pass's per-token record

    @property
    def ntok(self) -> int:
        return int(self.offsets[-1])


@dataclass
class _PreparedTask:
    spec: ZeroShotSpec
    items: list[TaskItem]
    encoded: list[tuple[list[int], list[int]]] = field(default_factory=list)
    ref_correct: np.ndarray | None = None  # the 16-bit model's per-item correctness

    def requests_of(self, items: np.ndarray) -> list[int]:
        """Flat request indices of ``items`` (each item has one request per choice)."""
        starts = np.concatenate([[0], np.cumsum([len(it.requests) for it in self.items])])
        return [r for i in items for r in range(int(starts[i]), int(starts[i + 1]))]


def _bos_added(tokenizer) -> str:
    """Which special token the tokenizer prepends by default ('none' if it adds nothing)."""
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_sp) > len(without) and with_sp[0] != without[0]:
        return str(tokenizer.convert_ids_to_tokens(with_sp[0]))
    return "none"


def max_length_of(model, tokenizer) -> int:
    """lm-eval ``HFLM.max_length``: the model config's context, else the tokenizer's
    ``model_max_length`` when set, else 2048."""
    ctx = model_context(model)
    if ctx is not None:
        return ctx
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < _TOKENIZER_UNSET:
        return tml
    return DEFAULT_MAX_LENGTH


class EvalSuite:
    """Evaluate models on perplexity specs and zero-shot tasks.

    Args:
        specs: from :func:`kscale.evaluate.eval_specs_from_config`.
        tokenizer: the model family's tokenizer (all cells of a job share it).
        data_dir: local data root (None = :func:`kscale.paths.default_data_dir`).
        cache_dir: token-stream cache root (None = no disk cache).
        device: where inputs go (None = the model's first parameter's device).
        seqlen_default: window length for ``gptq``/``sliding`` specs without ``seqlen`` (the
            family's). ``rolling`` specs without one use the model's context, as lm-eval does.
        source: ``auto``/``local``/``hub`` for every dataset.
        batch_size: sequences per forward pass, or ``"auto"`` (resolved at the first
            :meth:`run`/:meth:`set_reference`; see :attr:`batch_size_resolved`).
        max_length: the model context used for zero-shot truncation and the default rolling
            window; None = learned from the model (:func:`max_length_of`).
        corpus_options: extra loader keywords per corpus name, e.g. ``{"toy": provider_options}``
            so the toy corpus is generated from the same language the ladder was trained on.

    After each :meth:`run`/:meth:`set_reference`, :attr:`last_tokens` is the number of (real,
    unpadded) input tokens it forwarded and :attr:`last_forwards` the number of forward passes.
    """

    def __init__(self, specs: Sequence[EvalTaskSpec], tokenizer, *, data_dir=None, cache_dir=None,
                 device=None, seqlen_default: int = 2048, source: str = "auto", batch_size: int | str = 1,
                 max_length: int | None = None,
                 corpus_options: Mapping[str, Mapping[str, Any]] | None = None,
                 sequential: SequentialSpec | None = None) -> None:
        if not specs:
            raise ValueError("an EvalSuite needs at least one perplexity or zero-shot spec; got none")
        check_distinct(specs)
        self.specs = tuple(specs)
        self.tokenizer = tokenizer
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = device
        self.seqlen_default = int(seqlen_default)
        self.source = check_source(source)
        self.batch_size = check_batch_size(batch_size)
        self._max_length_fixed = int(max_length) if max_length is not None else None
        self.max_length: int | None = self._max_length_fixed
        self.corpus_options = {k: dict(v) for k, v in (corpus_options or {}).items()}
        self.sequential = sequential or SequentialSpec()
        self._ppl: list[_Prepared] | None = None
        self._tasks: list[_PreparedTask] | None = None
        self._batch: BatchSize | None = None
        self.has_reference = False
        self.last_tokens = 0
        self.last_forwards = 0
        self.last_seconds = 0.0

    # ------------------------------------------------------------------ identity

    @property
    def batch_size_resolved(self) -> int | None:
        """Sequences per forward pass at the suite's longest input (None until the first pass);
        equals ``batch_size`` when that is an int."""
        return self._batch.size if self._batch is not None else None

    def _seqlen(self, spec: PerplexitySpec) -> int | None:
        if spec.seqlen is not None:
            return spec.seqlen
        if spec.protocol == "rolling":
            return self.max_length
        return self.seqlen_default

    def identity(self, model=None) -> dict[str, str]:
        """``eval_<key>`` -> protocol name/version and settings, for result rows.

        A ``rolling`` spec without ``seqlen`` uses the model's context, so either pass ``model``,
        give the suite ``max_length``, or call this after :meth:`set_reference`/:meth:`run`.
        """
        if model is not None:
            self._learn_max_length(model)
        out: dict[str, str] = {}
        bos = None
        for spec in self.specs:
            if isinstance(spec, PerplexitySpec):
                proto = PROTOCOLS.get(spec.protocol)
                seqlen = self._seqlen(spec)
                if seqlen is None:
                    raise ValueError(
                        f"identity(): perplexity {spec.key!r} (rolling, seqlen null) uses the model's context, "
                        "which is not known yet; call identity(model), pass max_length= to EvalSuite, or call "
                        "identity() after set_reference()/run()"
                    )
                parts = [f"{proto.name}/{proto.version}", f"split={spec.split}", f"seqlen={seqlen}"]
                if spec.seqlen is None and spec.protocol == "rolling":
                    parts[-1] += "(model)"
                if spec.protocol == "sliding":
                    parts.append(f"stride={spec.stride or max(1, seqlen // 2)}")
                parts += [f"max_tokens={spec.max_tokens}", f"max_windows={spec.max_windows}"]
                if proto.level == "document":
                    parts.append(f"max_docs={spec.max_docs}")
                if spec.name is not None:
                    parts.append(f"dataset={spec.dataset}")
                if proto.level == "joined":
                    bos = bos or _bos_added(self.tokenizer)
                    parts.append(f"bos={bos}")
                else:
                    parts.append(f"prefix={self.tokenizer.convert_ids_to_tokens(prefix_token_id(self.tokenizer))}")
                parts.append(f"kl={'on' if spec.kl else 'off'}" + (f"(top{spec.kl_top_k})" if spec.kl else ""))
                out[f"eval_{spec.key}"] = " ".join(parts)
            else:
                task = TASKS.get(spec.task)
                out[f"eval_{spec.task}"] = f"{task.name}/{task.version} limit={spec.limit}"
        out["eval_source"] = self.source
        return out

    # ------------------------------------------------------------------ preparation

    def prepare(self, progress: bool = False) -> None:
        """Load and tokenize every dataset, build windows and encode zero-shot requests (once).

        Windows of a ``rolling`` spec without ``seqlen`` wait for the model's context
        (the first :meth:`run`/:meth:`set_reference`, or ``max_length=``)."""
        if self._ppl is not None:
            return
        ppl: list[_Prepared] = []
        for spec in self.specs:
            if not isinstance(spec, PerplexitySpec):
                continue
            proto = PROTOCOLS.get(spec.protocol)
            t0 = time.perf_counter()
            corpus = load_corpus(spec.dataset, data_dir=self.data_dir, split=spec.split, source=self.source,
                                 path=spec.path, **self.corpus_options.get(spec.dataset, {}))
            stream = tokenize_corpus(self.tokenizer, corpus, proto, cache_dir=self.cache_dir)
            stream = budget_stream(doc_limit(stream, spec.max_docs), proto, spec.max_tokens)
            log.info("%s/%s: %d tokens, %d documents (%.1f s)", spec.dataset, spec.protocol, len(stream.ids),
                     stream.n_docs, time.perf_counter() - t0)
            ppl.append(_Prepared(spec, stream))
        tasks: list[_PreparedTask] = []
        for spec in self.specs:
            if isinstance(spec, ZeroShotSpec):
                items = load_task_items(spec.task, data_dir=self.data_dir, source=self.source, limit=spec.limit)
                enc = [encode_pair(self.tokenizer, r.context, r.continuation) for it in items for r in it.requests]
                tasks.append(_PreparedTask(spec, items, enc))
        self._ppl, self._tasks = ppl, tasks
        self._build_windows()

    def _build_windows(self) -> None:
        for p in self._ppl or []:
            seqlen = self._seqlen(p.spec)
            if seqlen is None or (p.seqlen == seqlen and p.windows):
                continue
            spec, proto = p.spec, PROTOCOLS.get(p.spec.protocol)
            windows = proto.make_windows(p.stream, seqlen, spec.stride, prefix_token_id(self.tokenizer))
            windows = apply_budget(windows, p.stream, proto, spec.max_tokens, spec.max_windows)
            if not windows:
                raise ValueError(
                    f"perplexity on {spec.dataset!r} with protocol {spec.protocol!r}: no window fits; the "
                    f"stream has {len(p.stream.ids)} tokens (max_tokens={spec.max_tokens}) and seqlen={seqlen} "
                    f"(gptq needs at least seqlen tokens)"
                )
            p.seqlen, p.windows = seqlen, windows
            p.offsets = np.concatenate([[0], np.cumsum([w.n_pred for w in windows])]).astype(np.int64)
            p.n_bytes = scored_bytes(p.stream, windows, proto)
            p.ref = None

    def _learn_max_length(self, model) -> None:
        if self._max_length_fixed is not None:
            return
        ml = max_length_of(model, self.tokenizer)
        if self.max_length is not None and ml != self.max_length:
            if self.has_reference and any(p.spec.seqlen is None and p.spec.protocol == "rolling"
                                          for p in self._ppl or []):
                raise ValueError(f"this model's context ({ml}) differs from the reference model's "
                                 f"({self.max_length}); rolling windows would differ. Use a new EvalSuite")
            self._batch = None
        self.max_length = ml
        if self._ppl is not None:
            self._build_windows()

    def _setup(self, model) -> None:
        """Everything that needs the model: its context (checked, and the default rolling
        window), windows, and the resolved batch size."""
        self.prepare()
        self._learn_max_length(model)
        ctx = model_context(model)
        for p in self._ppl:
            if ctx is not None and p.seqlen > ctx:
                raise ValueError(
                    f"perplexity seqlen must be <= the model's context ({ctx} positions); got seqlen={p.seqlen} "
                    f"for {p.spec.key!r}"
                )
        if self._batch is None:
            longest = max([len(w.ids) - 1 for p in self._ppl for w in p.windows]
                          + [min(len(c) + len(x), self.max_length + 1) - 1 for t in self._tasks for c, x in t.encoded]
                          + [1])
            self._batch = resolve_batch_size(model, self.batch_size, longest, device=self.device)
            log.info("eval batch size: %s -> %d (longest input %d tokens)", self.batch_size, self._batch.size, longest)

    # ------------------------------------------------------------------ reference (16-bit)

    def set_reference(self, model, progress: bool = True) -> dict[str, float]:
        """Evaluate the (unquantized) model and keep its next-token distributions for KL / top-1.

        Keeps per scored token its NLL and argmax, and for ``kl`` specs the top-k log-probabilities
        (:mod:`kscale.evaluate.reference`), plus every zero-shot item's correctness; always over
        the full set, also when the suite is sequential. Returns the same metrics :meth:`run`
        returns for any later model — its paired statistics against itself are computed like
        every cell's and are exactly zero — so the 16-bit row needs no second pass.
        """
        self.clear_reference()
        out = self._evaluate(model, progress, reference=True)
        self.has_reference = True
        return out

    def clear_reference(self) -> None:
        for p in self._ppl or []:
            p.ref = None
        for t in self._tasks or []:
            t.ref_correct = None
        self.has_reference = False

    # ------------------------------------------------------------------ run

    def run(self, model, progress: bool = True) -> dict[str, float]:
        """All metrics for ``model``: ``{metric}_{key}`` plus ``acc_mean``/``acc_mean_stderr``."""
        return self._evaluate(model, progress, reference=False)

    def _evaluate(self, model, progress: bool, *, reference: bool) -> dict[str, float]:
        t0 = time.perf_counter()
        self._setup(model)
        stats = ForwardStats()
        metrics: dict[str, float] = {}
        for p in self._ppl:
            metrics.update(self._perplexity(model, p, progress, reference, stats))
        task_names = []
        for t in self._tasks:
            metrics.update(self._zeroshot(model, t, progress, reference, stats))
            task_names.append(t.spec.task)
        if task_names:
            metrics.update(acc_mean(metrics, task_names))
        self.last_tokens, self.last_forwards = stats.tokens, stats.forwards
        self.last_seconds = time.perf_counter() - t0
        return metrics

    def _perplexity(self, model, p: _Prepared, progress: bool, reference: bool,
                    stats: ForwardStats) -> dict[str, float]:
        """One spec's metrics: absolute ones with SEs, and (against the reference) the paired ones.
        A sequential suite scores windows in its seeded order until ``dnll``'s SE meets the target."""
        spec, seq = p.spec, self.sequential
        if reference:
            p.ref = TokenReference.empty(p.ntok, spec.kl_top_k if spec.kl else 0)
        paired = p.ref is not None
        scores = TokenScores.empty(p.ntok, paired and p.ref.topk_logp is not None)
        sequential = seq.target_se is not None and paired and not reference
        order = evaluation_order(len(p.windows), seq, active=sequential)
        win_sums = np.zeros(len(p.windows))  # per-window sums of dnll, for the stop rule

        def score(units: np.ndarray) -> None:
            self._score_windows(model, p, units, scores, reference, progress, stats)
            for j in units if sequential else ():
                a, b = p.offsets[j], p.offsets[j + 1]
                win_sums[j] = float(scores.nll[a:b].astype(np.float64).sum() - p.ref.nll[a:b].astype(np.float64).sum())

        def se_now(done: int) -> float:
            units = order[:done]
            counts = (p.offsets[units + 1] - p.offsets[units]).astype(np.float64)
            mean = win_sums[units].sum() / counts.sum()
            resid = win_sums[units] - mean * counts
            return math.sqrt(done / (done - 1) * float(resid @ resid)) / counts.sum()

        chunk = min(self._batch.rows_for(len(p.windows[0].ids) - 1, p.windows[0].n_pred), seq.min_windows)
        done = run_until(order, chunk, score, se_now if paired else None,
                         seq.target_se if sequential else None, seq.min_windows)
        used = np.sort(order[:done])
        idx, starts = window_starts(p.offsets, used)
        windows = [p.windows[j] for j in used]
        proto = PROTOCOLS.get(spec.protocol)
        n_bytes = p.n_bytes if done == len(p.windows) else scored_bytes(p.stream, windows, proto)
        nll = scores.nll[idx].astype(np.float64)
        res = PerplexityResult(nll, n_bytes, done)
        if proto.level == "document":
            summarize_rolling(res, p.stream, windows)
        metrics = self._ppl_metrics(spec.key, res)
        metrics.update(absolute_metrics(spec.key, nll, starts, n_bytes))
        metrics[f"subset_{spec.key}"] = len(idx) / p.ntok
        if paired:
            with_kl = scores.kl is not None
            metrics.update(paired_metrics(
                spec.key, nll, p.ref.nll[idx], starts,
                same_top1=(scores.top1[idx] == p.ref.top1[idx]) if spec.kl else None,
                kl=scores.kl[idx] if with_kl else None, kl_tail=scores.kl_tail[idx] if with_kl else None))
            # the paired estimate of this model's NLL on the *full* set: the 16-bit pass's full-set
            # mean plus the subset's paired difference (SE = dnll's); equals nll_<key> for a full run
            metrics[f"nll_{spec.key}_paired"] = float(p.ref.nll.mean()) + metrics[f"dnll_{spec.key}"]
            metrics[f"nll_{spec.key}_paired_se"] = metrics[f"dnll_{spec.key}_se"]
        return metrics

    def _score_windows(self, model, p: _Prepared, units: np.ndarray, scores: TokenScores, reference: bool,
                       progress: bool, stats: ForwardStats) -> None:
        """Forward the windows ``units`` and score their tokens into ``scores`` (window offsets)."""
        chosen = [p.windows[j] for j in units]
        for i, logits, targets in forward_scored(model, chosen, device=self.device, batch_size=self._batch,
                                                 progress=progress, stats=stats,
                                                 desc=f"{'reference ' if reference else ''}{p.spec.key}"):
            o, n = int(p.offsets[units[i]]), logits.shape[0]
            # Row chunks keep every [rows, V] temporary small: on CPU a fresh full-window
            # temporary (hundreds of MB at a 50k vocabulary) costs more in page faults than the math.
            chunk = _CHUNK_ELEMENTS if logits.device.type == "cpu" else 64 * _CHUNK_ELEMENTS
            step = max(1, chunk // logits.shape[-1])
            for a in range(0, n, step):
                b = min(a + step, n)
                score_rows(logits[a:b], targets[a:b], scores, o + a, p.ref, record=reference,
                           top_k=p.spec.kl_top_k, top1=p.spec.kl)

    def _zeroshot(self, model, t: _PreparedTask, progress: bool, reference: bool,
                  stats: ForwardStats) -> dict[str, float]:
        """One task's metrics; against the reference also flips and the paired accuracy difference.
        A sequential suite (``target_acc_se``) scores items in its seeded order until that SE is met."""
        seq = self.sequential
        task = TASKS.get(t.spec.task)
        paired = t.ref_correct is not None and not reference
        sequential = seq.target_acc_se is not None and paired
        order = evaluation_order(len(t.items), seq, active=sequential)
        results: dict[int, tuple[float, bool]] = {}
        correct = np.zeros(len(t.items))

        def score(items: np.ndarray) -> None:
            req = t.requests_of(items)
            out = loglikelihood(model, [t.encoded[r] for r in req], max_length=self.max_length, device=self.device,
                                progress=progress, desc=t.spec.task, batch_size=self._batch, stats=stats)
            results.update(zip(req, out))
            correct[items] = item_correct(task, [t.items[i] for i in items], out)

        def se_now(done: int) -> float:
            return mean_se(correct[order[:done]] - t.ref_correct[order[:done]])

        done = run_until(order, 10 * seq.min_windows, score, se_now if paired else None,
                         seq.target_acc_se if sequential else None, 10 * seq.min_windows)
        used = np.sort(order[:done])
        metrics = score_task(task, [t.items[i] for i in used], [results[r] for r in t.requests_of(used)])
        if reference:
            t.ref_correct = correct.copy()
        if t.ref_correct is not None:
            metrics.update(flip_metrics(task.name, correct[used], t.ref_correct[used]))
            metrics[f"subset_{task.name}"] = done / len(t.items)
        return metrics

    @staticmethod
    def _ppl_metrics(key: str, res: PerplexityResult) -> dict[str, float]:
        m = {f"nll_{key}": res.nll, f"ppl_{key}": res.ppl if res.nll < 700 else math.inf,
             f"bpb_{key}": res.bpb, f"ntok_{key}": float(res.ntok), f"nwin_{key}": float(res.n_windows)}
        if res.word_ppl is not None:
            m[f"word_ppl_{key}"] = res.word_ppl
            m[f"byte_ppl_{key}"] = res.byte_ppl
        return m
