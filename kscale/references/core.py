"""Published numbers as data: tables with their source and protocol, findings, format checks.

A published number is only comparable with ours when it was measured the same way, so every
:class:`PublishedTable` carries its :class:`PublishedProtocol` (dataset, split, window length,
BOS, windowing, calibration) next to the values, and :mod:`kscale.references.compare` checks a
row's recorded protocol against it before it reports a difference. Values are transcribed from
``/work/shared/REFERENCES.md`` only; ``memory=True`` marks what that file flags ``[memory]``
(to be verified against the paper before relying on it).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kscale.registry import Registry


@dataclass(frozen=True)
class PublishedProtocol:
    """How a published table was measured, in the terms kscale rows record.

    Attributes:
        dataset: the metric's dataset (``wikitext2``: the row column is ``ppl_wikitext2``).
        protocol: kscale perplexity protocol name that reproduces it (``gptq``).
        split: corpus split (``test``).
        seqlen: window length in tokens.
        bos: per family, the token the tokenizer prepends (OPT: ``</s>``); None = not checked.
        full_split: the whole split was scored (no ``max_tokens``/``max_windows`` budget).
        blocksize: quantization granularity of the quantized cells (None = one scale per row).
        calibration: expected ``calib_*`` columns of calibrated cells (dataset, split, nsamples, seqlen).
        quantizer: the published quantizer, in words (compared by hand; see ``notes``).
    """

    dataset: str
    protocol: str
    split: str
    seqlen: int
    bos: Mapping[str, str | None] = field(default_factory=dict)
    full_split: bool = True
    blocksize: int | None = None
    calibration: Mapping[str, Any] = field(default_factory=dict)
    quantizer: str = ""


@dataclass(frozen=True)
class PublishedValue:
    """One published cell: ``value`` of the table's metric for (family, size, method, bits).

    ``printed`` is the value as the source prints it (``1.3e3`` has two significant digits, so a
    difference below ~5 % of it means nothing)."""

    family: str
    size: str
    method: str  # kscale method name: none (16-bit), rtn, gptq
    bits: int
    value: float
    printed: str
    label: str = ""  # the source's column label, e.g. "125M"


@dataclass(frozen=True)
class PublishedTable:
    """A published table: values + protocol + source."""

    name: str
    title: str
    source: str
    metric: str  # result-row column prefix: "ppl" -> ppl_<dataset>
    protocol: PublishedProtocol
    values: tuple[PublishedValue, ...]
    memory: bool = False
    notes: str = ""

    @property
    def column(self) -> str:
        return f"{self.metric}_{self.protocol.dataset}"


@dataclass(frozen=True)
class FindingResult:
    """Outcome of checking a finding on a results table."""

    name: str
    status: str  # holds | fails | partial | no data
    detail: str


@dataclass(frozen=True)
class Finding:
    """A published claim as a statement plus a check on a results DataFrame."""

    name: str
    statement: str
    source: str
    check: Callable[..., FindingResult]
    memory: bool = False

    def __call__(self, df, **kw) -> FindingResult:
        return self.check(df, **kw)


@dataclass(frozen=True)
class StorageFormat:
    """A storage format's bits per weight, derived from its block layout.

    Attributes:
        block_weights: weights per (super-)block; block_bytes: bytes each block stores.
        kscale_spec: the ``QuantSpec`` fields that store the same bits (None = no equivalent).
    """

    name: str
    block_weights: int
    block_bytes: int
    layout: str
    source: str
    kscale_spec: Mapping[str, Any] | None = None
    published_bpw: float | None = None

    @property
    def bits_per_weight(self) -> float:
        return self.block_bytes * 8 / self.block_weights


TABLES: Registry[PublishedTable] = Registry("published table")
FINDINGS: Registry[Finding] = Registry("published finding")
FORMATS: Registry[StorageFormat] = Registry("storage format")
