"""Where the toy family's text comes from: the synthetic language or a local text file.

Training batches (:meth:`SyntheticSource.batches`), the held-out and calibration splits
(:func:`load_toy_corpus`, registered as corpus ``toy``) and the cache of generated corpora.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from kscale.data.corpus import TextCorpus
from kscale.paths import default_cache_dir, write_text_atomic
from kscale.toy.language import LanguageSpec, MarkovLanguage
from kscale.toy.options import ToyOptions
from kscale.toy.tokenizer import text_vocabulary

log = logging.getLogger(__name__)

# SeedSequence spawn keys; training uses 1. "calib" is fresh text for calibrated methods (GPTQ,
# AWQ, imatrix), so they never see the evaluated split.
_SPLIT_KEYS = {"train": 4, "validation": 3, "test": 2, "calib": 5}
_SPLIT_ALIASES = {"valid": "validation", "val": "validation"}


class SyntheticSource:
    """Training batches and held-out text from the embedded :class:`MarkovLanguage`."""

    def __init__(self, language: MarkovLanguage) -> None:
        self.language = language
        self.words = language.words
        self.entropy_rate: float | None = language.entropy_rate

    def batches(self, seed: int):
        """Batch ``i`` = ``batch_size`` fresh stationary windows from ``SeedSequence([seed, 1, i])``.

        Every window starts from the stationary distribution, so it is distributed exactly as
        a window of one endless sample; the order is fixed by the seed and the step index.
        """

        def gen(steps: int, batch_size: int, seqlen: int) -> Iterator[np.ndarray]:
            for i in range(steps):
                yield self.language.sample(batch_size, seqlen, np.random.SeedSequence([seed, 1, i]))

        return gen

    def split_tokens(self, split: str, n_tokens: int, doc_tokens: int, seed: int) -> list[np.ndarray]:
        n_docs = max(1, -(-n_tokens // doc_tokens))
        ss = np.random.SeedSequence([seed, _SPLIT_KEYS[split]])
        docs = self.language.sample(n_docs, doc_tokens, ss)
        flat = docs.ravel()[:n_tokens]
        return [flat[i : i + doc_tokens] for i in range(0, len(flat), doc_tokens)]


class TextSource:
    """Word-level training data from a local text file: first 90% of lines train, rest held out.

    ``validation`` and ``test`` are the same held-out lines (the demo file has no third split),
    ``calib`` the training lines (calibration text the evaluation never sees, as GPTQ's C4 train);
    the entropy rate is unknown (``None``).
    """

    def __init__(self, path: str, max_vocab: int) -> None:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        cut = int(0.9 * len(lines))
        self.lines = {"train": lines[:cut], "test": lines[cut:], "validation": lines[cut:], "calib": lines[:cut]}
        self.words = text_vocabulary("\n".join(self.lines["train"]), max_vocab)
        self._ids = {w: i for i, w in enumerate(self.words)}
        self._unk = len(self.words)  # build_tokenizer puts <unk> right after the words
        self.entropy_rate = None
        self._train_ids = self.encode(" ".join(self.lines["train"]))

    def encode(self, text: str) -> np.ndarray:
        return np.array([self._ids.get(w, self._unk) for w in text.split()], dtype=np.int64)

    def batches(self, seed: int):
        """Windows at offsets from a seeded permutation of the training stream (epochs if needed)."""
        ids = self._train_ids

        def gen(steps: int, batch_size: int, seqlen: int) -> Iterator[np.ndarray]:
            n_windows = len(ids) - seqlen
            if n_windows < batch_size:
                raise ValueError(f"text file too short for seqlen={seqlen}: {len(ids)} tokens")
            rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
            order = rng.permutation(n_windows)
            pos = 0
            for _ in range(steps):
                if pos + batch_size > len(order):
                    order, pos = rng.permutation(n_windows), 0
                starts = order[pos : pos + batch_size]
                pos += batch_size
                yield np.stack([ids[s : s + seqlen] for s in starts])

        return gen


@lru_cache(maxsize=8)
def _source(language: LanguageSpec, text_path: str | None, max_vocab: int):
    if text_path is not None:
        return TextSource(text_path, max_vocab)
    return SyntheticSource(MarkovLanguage(language))


def data_source(opts: ToyOptions) -> SyntheticSource | TextSource:
    """The (cached) data source the options describe."""
    return _source(opts.language, opts.text_path, opts.max_vocab)


def load_toy_corpus(
    *, data_dir=None, split: str = "calib", source: str = "auto", path=None,
    n_tokens: int | None = None, **options: Any,
) -> TextCorpus:
    """Held-out text of the toy language (or the held-out lines of ``text_path``).

    The default split is ``calib``: fresh text that no evaluation reads, which is what a caller
    that names no split gets, i.e. the calibrated methods (GPTQ, AWQ, imatrix: their rows record
    ``calib_split=calib``). Evaluations name their split (``test`` in ``conf/eval/toy.yaml``).

    Deterministic: documents are independent stationary samples from
    ``SeedSequence([corpus_seed, split_key])``, a different stream from the training batches
    (``SeedSequence([seed, 1, step])``). ``rows`` are ``row_tokens``-word lines in document
    order, ``documents`` the ``doc_tokens``-word documents. ``options`` are the toy provider
    options (so a sweep can pass its ``provider_options`` unchanged); ``data_dir``, ``source``
    and ``path`` are accepted for the loader signature and unused (the text is generated).
    """
    del data_dir, path
    if source not in ("auto", "local"):
        raise ValueError(f"the toy corpus is generated locally; source must be 'auto' or 'local', got {source!r}")
    split = _SPLIT_ALIASES.get(split, split)
    if split not in _SPLIT_KEYS:
        raise ValueError(f"unknown toy split {split!r}; allowed: {sorted(_SPLIT_KEYS) + sorted(_SPLIT_ALIASES)}")
    opts = ToyOptions.from_mapping(options)
    n_tokens = opts.corpus_tokens if n_tokens is None else int(n_tokens)
    if n_tokens < 2:
        raise ValueError(f"n_tokens must be >= 2; got {n_tokens}")
    if opts.text_path is not None:
        src = data_source(opts)
        lines = [ln for ln in src.lines[split] if ln.strip()]
        return TextCorpus(name="toy", rows=tuple(lines), documents=("\n".join(lines),),
                          source=f"{opts.text_path} (held-out lines, split {split})")
    lang_key = hashlib.sha256(json.dumps(opts.language.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    label = f"kscale.toy language {lang_key}, split {split}, corpus_seed {opts.corpus_seed}"
    cached = _corpus_cache_path(opts, split, n_tokens)
    try:
        text = json.loads(cached.read_text())
        return TextCorpus(name="toy", rows=tuple(text["rows"]), documents=tuple(text["documents"]), source=label)
    except (OSError, ValueError, KeyError):  # not cached yet (or damaged): generate it
        pass
    src = data_source(opts)
    docs = src.split_tokens(split, n_tokens, opts.doc_tokens, opts.corpus_seed)
    words = src.words
    rows: list[str] = []
    documents: list[str] = []
    for doc in docs:
        doc_rows = [" ".join(words[i] for i in doc[j : j + opts.row_tokens]) for j in range(0, len(doc), opts.row_tokens)]
        rows.extend(doc_rows)
        documents.append("\n".join(doc_rows))
    try:
        write_text_atomic(cached, json.dumps({"rows": rows, "documents": documents}))
    except OSError as err:  # a read-only cache still evaluates, it just regenerates next time
        log.warning("could not cache the toy corpus at %s (%s)", cached, err)
    return TextCorpus(name="toy", rows=tuple(rows), documents=tuple(documents), source=label)


#: bump when the corpus generation changes: the cache key of every generated corpus includes it
_CORPUS_FORMAT = 1


def _corpus_cache_path(opts: ToyOptions, split: str, n_tokens: int) -> Path:
    """Where the generated held-out text of these options is cached. Why cache text that is a
    pure function of the options: generating it first builds the language (its transition
    matrix, ~0.4 s), a fixed cost every toy job would otherwise pay again."""
    spec = {"format": _CORPUS_FORMAT, "language": opts.language.to_dict(), "split": split,
            "n_tokens": n_tokens, "doc_tokens": opts.doc_tokens, "row_tokens": opts.row_tokens,
            "corpus_seed": opts.corpus_seed}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return default_cache_dir() / "toy" / "corpora" / f"{key}.json"
