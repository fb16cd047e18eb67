"""Frozen evaluation specs and the pure ``dict -> specs`` conversion of a ``conf/eval`` group."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Union

from kscale.data.corpus import check_available
from kscale.data.tasks import check_task_available
from kscale.evaluate.perplexity import PROTOCOLS
from kscale.evaluate.zeroshot import TASKS
from kscale.registry import did_you_mean

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: identity keys the suite writes itself; no spec may be named so
_RESERVED = ("source", "batch_size", "max_length")


@dataclass(frozen=True)
class PerplexitySpec:
    """One perplexity measurement.

    Attributes:
        dataset: corpus name in :data:`kscale.data.CORPORA` (``wikitext2``, ``ptb``, ``c4``, ``text``, ``toy``).
        protocol: name in :data:`kscale.evaluate.PROTOCOLS` (``gptq``, ``sliding``, ``rolling``).
        seqlen: window length in tokens; None = the suite's ``seqlen_default`` (the family's).
        stride: ``sliding`` only: tokens between window starts; None = ``seqlen // 2``.
        max_tokens: budget: only the first ``max_tokens`` tokens of the stream (``gptq``,
            ``sliding``) or whole documents until that many tokens (``rolling``). None = all.
        max_windows: budget in windows (applied after ``max_tokens``). None = all.
        kl: measure KL(p16 || pq) and top-1 agreement against the suite's reference model, over
            every scored token (paired NLL and Δp statistics are measured either way).
        kl_top_k: the reference keeps this many largest log-probabilities per scored token
            (8 bytes each; :mod:`kscale.evaluate.reference` bounds the KL this leaves out).
        split, path: corpus split and optional local file (``text`` corpus).
        max_docs: ``rolling`` only: score only the first ``max_docs`` documents (lm-eval's
            ``limit``), applied before ``max_tokens``. None = all.
        name: metric suffix (``ppl_<name>``) and identity key (``eval_<name>``); None = ``dataset``.
            Needed when one dataset is measured twice (e.g. ``gptq`` at 2048 and at 512).
    """

    dataset: str
    protocol: str = "gptq"
    seqlen: int | None = None
    stride: int | None = None
    max_tokens: int | None = None
    max_windows: int | None = None
    kl: bool = True
    kl_top_k: int = 64
    split: str = "test"
    path: str | None = None
    max_docs: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        proto = PROTOCOLS.get(self.protocol)  # unknown -> did-you-mean error
        for name in ("seqlen", "stride", "max_tokens", "max_windows", "max_docs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"perplexity {name} must be a positive int or null; got {value!r}")
        if self.seqlen is not None and self.seqlen < 2:
            raise ValueError(f"perplexity seqlen must be >= 2; got {self.seqlen}")
        if self.stride is not None and self.protocol != "sliding":
            raise ValueError(f"stride applies to protocol 'sliding' only; got stride={self.stride} "
                             f"with protocol {self.protocol!r}")
        if isinstance(self.kl_top_k, bool) or not isinstance(self.kl_top_k, int) or self.kl_top_k < 1:
            raise ValueError(f"kl_top_k must be a positive int (log-probabilities kept per token); "
                             f"got {self.kl_top_k!r}")
        if self.max_docs is not None and proto.level != "document":
            raise ValueError(f"max_docs applies to document-level protocols (rolling) only; got "
                             f"max_docs={self.max_docs} with protocol {self.protocol!r} (use max_tokens)")
        if self.name is not None and not _NAME.fullmatch(str(self.name)):
            raise ValueError(f"perplexity name must match {_NAME.pattern} (it becomes a column suffix); "
                             f"got {self.name!r}")

    @property
    def key(self) -> str:
        """Metric suffix and identity key: ``name`` if set, else ``dataset``."""
        return self.name or self.dataset


@dataclass(frozen=True)
class ZeroShotSpec:
    """One zero-shot task (:data:`kscale.evaluate.TASKS`), optionally on its first ``limit`` items."""

    task: str
    limit: int | None = None

    @property
    def key(self) -> str:
        return self.task

    def __post_init__(self) -> None:
        TASKS.get(self.task)
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"zero-shot limit must be a positive int or null; got {self.limit!r}")


EvalTaskSpec = Union[PerplexitySpec, ZeroShotSpec]


@dataclass(frozen=True)
class SequentialSpec:
    """Stop evaluating a cell once its paired difference is known well enough.

    Attributes:
        target_se: nats; a perplexity spec's windows are scored in a seeded random order and
            scoring stops once the window-clustered SE of ``dnll`` is at most this (None = every window).
        target_acc_se: the same for zero-shot items, on the paired SE of the accuracy difference.
        min_windows: never stop before this many windows (items: 10x this), so the SE itself is
            estimated from enough clusters.
        order_seed: seed of the evaluation order (fixed: every cell sees the same prefix).
    """

    target_se: float | None = None
    target_acc_se: float | None = None
    min_windows: int = 16
    order_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("target_se", "target_acc_se"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"eval.{name} must be a positive number or null; got {value!r}")
        if isinstance(self.min_windows, bool) or not isinstance(self.min_windows, int) or self.min_windows < 2:
            raise ValueError(f"eval.min_windows must be an int >= 2 (an SE needs two windows); got {self.min_windows!r}")
        if isinstance(self.order_seed, bool) or not isinstance(self.order_seed, int):
            raise ValueError(f"eval.order_seed must be an int; got {self.order_seed!r}")

    @property
    def active(self) -> bool:
        return self.target_se is not None or self.target_acc_se is not None


def sequential_from_config(d: Mapping[str, Any]) -> SequentialSpec:
    """The sequential options of an eval config (all optional)."""
    kw = {k: d[k] for k in ("target_se", "target_acc_se", "min_windows", "order_seed") if d.get(k) is not None}
    return SequentialSpec(**kw)

_GROUP_KEYS = ("perplexity", "zeroshot", "kl", "source", "kl_top_k", "name", "seqlen", "batch_size",
               "target_se", "target_acc_se", "min_windows", "order_seed")


def _build(cls, entry: Any, where: str, defaults: Mapping[str, Any]):
    if isinstance(entry, str):
        entry = {"dataset" if cls is PerplexitySpec else "task": entry}
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: each entry must be a mapping or a name; got {entry!r}")
    allowed = [f.name for f in fields(cls)]
    for key in entry:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r}.{did_you_mean(str(key), allowed)} "
                             f"Allowed: {', '.join(allowed)}")
    kw = {k: v for k, v in defaults.items() if k in allowed}
    kw.update({k: v for k, v in entry.items()})
    return cls(**kw)


def eval_specs_from_config(d: Mapping[str, Any]) -> list[EvalTaskSpec]:
    """Convert one ``conf/eval/<name>.yaml`` body (a plain dict) to frozen specs.

    Keys: ``perplexity: [{dataset, protocol, seqlen, stride, max_tokens, ...}]``,
    ``zeroshot: [{task, limit}]``, ``kl`` (default for every perplexity entry),
    ``kl_top_k``, ``seqlen`` (default for entries without one), ``source``, ``batch_size`` and ``name``
    (read by :class:`~kscale.evaluate.EvalSuite`'s caller, ignored here), and the sequential options
    ``target_se``, ``target_acc_se``, ``min_windows``, ``order_seed`` (:func:`sequential_from_config`).
    Unknown keys, protocols and tasks raise ``ValueError`` with a did-you-mean hint.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"an eval config must be a mapping; got {type(d).__name__}")
    for key in d:
        if key not in _GROUP_KEYS:
            raise ValueError(f"eval config: unknown key {key!r}.{did_you_mean(str(key), _GROUP_KEYS)} "
                             f"Allowed: {', '.join(_GROUP_KEYS)}")
    defaults = {k: d[k] for k in ("kl", "kl_top_k", "seqlen") if k in d and d[k] is not None}
    specs: list[EvalTaskSpec] = []
    for i, entry in enumerate(d.get("perplexity") or []):
        specs.append(_build(PerplexitySpec, entry, f"eval perplexity[{i}]", defaults))
    for i, entry in enumerate(d.get("zeroshot") or []):
        specs.append(_build(ZeroShotSpec, entry, f"eval zeroshot[{i}]", {}))
    check_distinct(specs)
    return specs


def check_distinct(specs) -> None:
    """Metric columns are ``{metric}_{key}`` (key = a perplexity spec's ``name`` or dataset, or
    the task): two specs with one key would overwrite each other's columns, so reject them."""
    keys = [s.key for s in specs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(
            f"eval config: metric keys are '{{metric}}_{{key}}' (key = the perplexity entry's name, else its "
            f"dataset; the task for zero-shot), so each key may appear once; repeated: {dupes}. To measure one "
            f"dataset twice, give each perplexity entry a distinct name, e.g. "
            f"{{dataset: wikitext2, protocol: gptq, seqlen: 512, name: wikitext2_512}}"
        )
    reserved = sorted(set(keys) & set(_RESERVED))
    if reserved:
        raise ValueError(f"eval config: {reserved} cannot be used as a perplexity name (reserved identity keys "
                         f"{', '.join(_RESERVED)})")


def check_eval_data(specs, data_dir=None, source: str = "auto") -> None:
    """Config-time check that every corpus and task of ``specs`` can be loaded (local file
    present, or hub allowed and reachable); raises ``ValueError`` naming the first that cannot.
    Loads and tokenizes nothing."""
    for spec in specs:
        if isinstance(spec, PerplexitySpec):
            check_available(spec.dataset, data_dir, source, split=spec.split, path=spec.path)
        else:
            check_task_available(spec.task, data_dir, source)
