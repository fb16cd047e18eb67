"""Calibration data for data-aware quantization (GPTQ): which text, how many windows, which seed.

GPTQ's reference (IST-DASLab/gptq ``datautils.py``) draws ``nsamples`` random windows of
``seqlen`` tokens from one tokenized text with ``random.seed(seed)``; the paper calibrates on
128 windows of 2048 tokens from C4's first training shard. kscale makes each of those choices a
field of :class:`CalibrationConfig`, so it is recorded in every result row (``to_row``) and a
sweep can make, e.g., the calibration seed an axis. Offline, only WikiText-2's *test* split
and the toy language exist locally; calibrating on the split that is also evaluated leaks
(slightly) and is recorded as such in the row (``calib_dataset``/``calib_split``).
"""
from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kscale.data import CORPORA, load_corpus

log = logging.getLogger(__name__)

__all__ = ["CalibrationConfig", "CalibrationSet", "calibration_tokens", "sample_windows", "window_tokens"]


@dataclass(frozen=True)
class CalibrationConfig:
    """Which calibration windows GPTQ sees.

    Attributes:
        dataset: corpus name in :data:`kscale.data.CORPORA` (``wikitext2``, ``c4``, ``ptb``,
            ``text``, ``toy``).
        split: corpus split; ``None`` = the loader's default (``test`` for WikiText-2,
            ``validation`` for C4; the paper used C4 ``train``).
        nsamples: number of windows (GPTQ: 128).
        seqlen: tokens per window; ``None`` = the model family's sequence length (resolved by
            :func:`calibration_tokens`, and the resolved value is what rows record).
        seed: seed of the window positions (GPTQ: 0).
        source: ``auto`` | ``local`` | ``hub`` (passed to the corpus loader).
        path: explicit local file for the corpus, if any.
    """

    dataset: str = "wikitext2"
    split: str | None = None
    nsamples: int = 128
    seqlen: int | None = None
    seed: int = 0
    source: str = "auto"
    path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"calibration dataset must be a corpus name; got {self.dataset!r}")
        if isinstance(self.nsamples, bool) or not isinstance(self.nsamples, int) or self.nsamples < 1:
            raise ValueError(f"calibration nsamples must be an integer >= 1; got {self.nsamples!r}")
        if self.seqlen is not None and (
            isinstance(self.seqlen, bool) or not isinstance(self.seqlen, int) or self.seqlen < 2
        ):
            raise ValueError(f"calibration seqlen must be an integer >= 2 or None; got {self.seqlen!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"calibration seed must be an integer; got {self.seed!r}")

    def to_row(self) -> dict[str, Any]:
        """Identity fields for result rows."""
        return {
            "calib_dataset": self.dataset,
            "calib_split": self.split,
            "calib_nsamples": self.nsamples,
            "calib_seqlen": self.seqlen,
            "calib_seed": self.seed,
        }


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration token windows ``tokens`` ``[nsamples, seqlen]`` and the (resolved) config."""

    tokens: Tensor
    config: CalibrationConfig

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2 or self.tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"calibration tokens must be an integer tensor [nsamples, seqlen]; got "
                f"{self.tokens.dtype} {tuple(self.tokens.shape)}"
            )


def window_tokens(calibration: CalibrationSet | Tensor | None, method: str) -> Tensor:
    """The ``[nsamples, seqlen]`` token windows a calibrated method runs on; a clear error (naming
    ``method``) when the caller gave none."""
    if isinstance(calibration, CalibrationSet):
        return calibration.tokens
    if isinstance(calibration, Tensor) and calibration.ndim == 2 and not calibration.is_floating_point():
        return calibration
    raise ValueError(
        f"{method} needs calibration token windows: pass calibration=kscale.quant.calibration."
        "calibration_tokens(config, tokenizer) (a CalibrationSet) or a LongTensor [nsamples, seqlen]; "
        f"got {type(calibration).__name__}"
    )


def sample_windows(ids: Tensor, nsamples: int, seqlen: int, seed: int) -> Tensor:
    """``nsamples`` random windows ``[nsamples, seqlen]`` of the 1-D token stream ``ids``.

    Window starts are ``random.Random(seed).randint(0, len(ids) - seqlen - 1)``, the draw of
    GPTQ's ``get_wikitext2`` (which also keeps one token after each window for its targets).
    """
    n = ids.numel()
    if n < seqlen + 1:
        raise ValueError(
            f"calibration text has {n} tokens, fewer than seqlen + 1 = {seqlen + 1}; "
            "use a longer corpus or a shorter seqlen"
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, n - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[s : s + seqlen] for s in starts])


def calibration_tokens(
    config: CalibrationConfig,
    tokenizer: Any,
    *,
    seqlen: int | None = None,
    data_dir: str | Path | None = None,
    corpus_options: Mapping[str, Any] | None = None,
) -> CalibrationSet:
    """Load ``config.dataset``, tokenize it once (rows joined with ``"\\n\\n"``, as GPTQ does
    for WikiText-2) and draw the windows.

    ``seqlen`` is the fallback for ``config.seqlen=None`` (the family's sequence length);
    ``corpus_options`` go to the corpus loader unchanged (e.g. the toy family's provider
    options, so that calibration text comes from the language the model was trained on).
    """
    length = config.seqlen if config.seqlen is not None else seqlen
    if length is None:
        raise ValueError("calibration seqlen is None and no model seqlen was given; set one of them")
    kwargs: dict[str, Any] = {**dict(corpus_options or {}), "data_dir": data_dir, "source": config.source,
                              "path": config.path}
    if config.split is not None:
        kwargs["split"] = config.split
    corpus = load_corpus(config.dataset, **kwargs)
    ids = torch.tensor(tokenizer(corpus.joined())["input_ids"], dtype=torch.long)
    tokens = sample_windows(ids, config.nsamples, int(length), config.seed)
    split = config.split if config.split is not None else default_split(config.dataset)
    log.info(
        "calibration: %d windows of %d tokens from %s/%s (%d tokens, seed %d)",
        config.nsamples, length, config.dataset, split, ids.numel(), config.seed,
    )
    return CalibrationSet(tokens=tokens, config=replace(config, seqlen=int(length), split=split))


def default_split(dataset: str) -> str | None:
    """The split a corpus loader reads when none is given (``test`` for the local WikiText-2),
    so a row records the split GPTQ actually calibrated on, never null."""
    try:
        loader = CORPORA.get(dataset)
        default = inspect.signature(loader).parameters["split"].default
    except (KeyError, TypeError, ValueError):
        return None
    return None if default is inspect.Parameter.empty else default
