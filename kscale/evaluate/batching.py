"""Batched forward passes over scored token windows, and the choice of a batch size.

Everything kscale scores — perplexity windows, rolling windows, zero-shot requests — is a
:class:`~kscale.evaluate.perplexity.Window`: the model reads ``ids[:-1]`` and the last
``n_pred`` targets of ``ids[1:]`` are scored. :func:`forward_scored` sorts windows by length
(longest first, as lm-evaluation-harness's ``Collator`` does), pads each batch on the right and
runs one forward pass per batch.

Why right padding keeps numbers exact: with causal attention a real token never attends to a
later position, so padding after it cannot change its logits, and its position ids are the
same ``0..n-1`` as unpadded (an ``attention_mask`` is passed anyway, for models that derive
position ids from it, e.g. OPT). The LM head runs only on the positions some row of the batch
scores (``logits_to_keep``), which is where most of the saving over lm-eval's full-logit
``log_softmax`` comes from on large vocabularies.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

#: "auto" on CPU: tokens per forward pass (memory and cache-friendly matmuls; more buys nothing).
CPU_TOKENS_PER_BATCH = 2048
#: "auto" on CPU: at most this many logit values (kept positions x vocabulary) per forward pass.
#: Why: a batch of four 512-token rolling windows on a 50k vocabulary makes a 400 MB logits
#: tensor, fresh memory every pass (page faults) that runs ~1.4x slower per window than one row;
#: zero-shot batches keep only their continuation positions and are not limited by it.
CPU_LOGITS_PER_BATCH = 1 << 25
#: "auto": never more sequences per batch than this (lm-eval's default ``max_batch_size``).
AUTO_MAX_BATCH = 64


def model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _accepts(model, arg: str) -> bool:
    try:
        return arg in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def pad_token_id(model) -> int:
    """Any in-vocabulary id works as padding (padded positions are never read by real tokens
    nor scored); prefer the model's own ``pad_token_id``."""
    pid = getattr(getattr(model, "config", None), "pad_token_id", None)
    return pid if isinstance(pid, int) and pid >= 0 else 0


@dataclass
class ForwardStats:
    """What a scoring pass cost: real input tokens, padded slots and forward passes."""

    tokens: int = 0
    padded: int = 0
    forwards: int = 0

    def add(self, other: ForwardStats) -> None:
        self.tokens += other.tokens
        self.padded += other.padded
        self.forwards += other.forwards


@dataclass(frozen=True)
class BatchSize:
    """A resolved batch size: at most ``size`` sequences and (``auto``) at most ``tokens`` input
    tokens per forward pass, so short zero-shot requests pack more rows than 2048-token windows."""

    size: int
    tokens: int | None = None
    #: at most this many scored (logit) positions per pass; None: no limit
    positions: int | None = None

    def rows_for(self, length: int, scored: int | None = None) -> int:
        """Rows for a batch whose longest window reads ``length`` tokens and scores ``scored``."""
        if self.tokens is None:
            return self.size
        rows = max(1, min(AUTO_MAX_BATCH, self.tokens // max(1, length)))
        if self.positions is not None and scored:
            rows = max(1, min(rows, self.positions // scored))
        return rows


def check_batch_size(value) -> int | str:
    """``batch_size`` is a positive int or ``"auto"``."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"batch_size must be a positive int or 'auto'; got {value!r}")
    return value


def plan_batches(lengths: Sequence[int], batch: BatchSize, scored: Sequence[int] | None = None) -> list[list[int]]:
    """Indices grouped into batches: sorted by length descending (stable), each batch holding at
    most ``batch.rows_for(its longest length, its first window's scored positions)`` windows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out, i = [], 0
    while i < len(order):
        rows = batch.rows_for(lengths[order[i]], scored[order[i]] if scored is not None else None)
        out.append(order[i : i + rows])
        i += rows
    return out


def _probe(model, rows: int, length: int, device) -> None:
    """One forward at ``rows x length`` plus the log-softmax a scored batch needs (lm-eval's probe)."""
    x = torch.zeros((rows, length), dtype=torch.long, device=device)
    kw = {"use_cache": False} if _accepts(model, "use_cache") else {}
    with torch.inference_mode():
        logits = model(input_ids=x, **kw).logits
        torch.log_softmax(logits.float(), dim=-1)
    del x, logits


def largest_fitting(attempt: Callable[[int], None], start: int, on_fail: Callable[[], None] = lambda: None) -> int:
    """The first of ``start, start/2, ..., 1`` for which ``attempt(rows)`` does not run out of
    memory (``torch.OutOfMemoryError``); re-raises if even one row does not fit."""
    rows = max(1, int(start))
    while True:
        try:
            attempt(rows)
            return rows
        except torch.OutOfMemoryError:
            on_fail()
            if rows == 1:
                raise
            rows //= 2


def resolve_batch_size(model, requested: int | str, max_length: int, *, device=None) -> BatchSize:
    """``requested`` int -> that many rows. ``"auto"``: on CPU, ``CPU_TOKENS_PER_BATCH`` tokens
    per pass; on CUDA, the largest power-of-two row count (<= ``AUTO_MAX_BATCH``) whose
    ``rows x max_length`` forward fits, found by halving on out-of-memory as lm-eval's
    ``_detect_batch_size`` does; the token budget is then ``rows x max_length``."""
    requested = check_batch_size(requested)
    if requested != "auto":
        return BatchSize(int(requested))
    device = torch.device(device) if device is not None else model_device(model)
    max_length = max(1, int(max_length))
    if device.type != "cuda":
        vocab = _vocab_size(model)
        return BatchSize(max(1, min(AUTO_MAX_BATCH, CPU_TOKENS_PER_BATCH // max_length)), CPU_TOKENS_PER_BATCH,
                         positions=max(1, CPU_LOGITS_PER_BATCH // vocab) if vocab else None)
    rows = largest_fitting(lambda r: _probe(model, r, max_length, device), AUTO_MAX_BATCH,
                           on_fail=torch.cuda.empty_cache)
    log.info("batch_size auto: %d rows of %d tokens fit on %s", rows, max_length, device)
    return BatchSize(rows, rows * max_length)


def _vocab_size(model) -> int | None:
    """Rows of the output embedding (the logits' width), else ``config.vocab_size``."""
    try:
        head = model.get_output_embeddings()
        if head is not None and getattr(head, "weight", None) is not None:
            return int(head.weight.shape[0])
    except (AttributeError, NotImplementedError):
        pass
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(vocab) if isinstance(vocab, int) and vocab > 0 else None


def as_batch(batch_size: int | str | BatchSize, model=None, max_length: int = 1, device=None) -> BatchSize:
    if isinstance(batch_size, BatchSize):
        return batch_size
    return resolve_batch_size(model, batch_size, max_length, device=device)


def forward_scored(model, windows: Sequence, *, device=None, batch_size: int | str | BatchSize = 1,
                   progress: bool = False, desc: str = "eval", stats: ForwardStats | None = None,
                   ) -> Iterator[tuple[int, object, object]]:
    """Yield ``(index, logits[n_pred, V] float32, targets[n_pred])`` for every window.

    Windows come in *batch order* (longest first), not input order: use ``index``. No KV cache,
    no grad; ``stats`` (if given) accumulates real tokens, padding and forward passes.
    """
    device = device or model_device(model)
    if not windows:
        return
    batch = as_batch(batch_size, model, max(len(w.ids) - 1 for w in windows), device)
    keep_ok = _accepts(model, "logits_to_keep")
    mask_ok = _accepts(model, "attention_mask")
    base_kw = {"use_cache": False} if _accepts(model, "use_cache") else {}
    pad = pad_token_id(model)
    stats = stats if stats is not None else ForwardStats()
    bar = tqdm(total=len(windows), desc=desc, disable=not progress, leave=False)
    lengths = [len(w.ids) - 1 for w in windows]
    with torch.inference_mode():
        for idx in plan_batches(lengths, batch, [w.n_pred for w in windows]):
            lens = [lengths[i] for i in idx]
            width = lens[0]
            x = np.full((len(idx), width), pad, dtype=np.int64)
            for r, i in enumerate(idx):
                x[r, : lens[r]] = windows[i].ids[:-1]
            starts = [lens[r] - windows[i].n_pred for r, i in enumerate(idx)]
            if min(starts) < 0:
                raise ValueError(f"a window scores more targets than it has inputs: n_pred={windows[idx[0]].n_pred}")
            kw = dict(base_kw)
            if keep_ok:
                kw["logits_to_keep"] = width - min(starts)
            inputs = torch.as_tensor(x, device=device)
            if mask_ok and lens[-1] < width:
                mask = np.arange(width)[None, :] < np.asarray(lens)[:, None]
                kw["attention_mask"] = torch.as_tensor(mask.astype(np.int64), device=device)
            logits = model(input_ids=inputs, **kw).logits
            offset = width - logits.shape[1]  # logits column c is input position offset + c
            stats.tokens += sum(lens)
            stats.padded += len(idx) * width - sum(lens)
            stats.forwards += 1
            for r, i in enumerate(idx):
                w = windows[i]
                rows = logits[r, starts[r] - offset : lens[r] - offset].float()
                targets = torch.as_tensor(np.asarray(w.ids[-w.n_pred :], dtype=np.int64), device=rows.device)
                yield i, rows, targets
            bar.update(len(idx))
    bar.close()
