"""Perplexity protocols: named, versioned ways to turn a corpus into scored windows.

"WikiText-2 perplexity" means three different numbers in the literature (REFERENCES.md §"user
asks" 1): GPTQ's joined text in non-overlapping 2048-token windows, the Hugging Face sliding
window recipe, and lm-evaluation-harness's document-level rolling log-likelihood. Each is a
:class:`Protocol` here, and its ``name/version`` plus settings go into every result row.

A *window* is a token array ``ids``: the model reads ``ids[:-1]`` and the last ``n_pred``
targets of ``ids[1:]`` are scored. Every protocol scores each token it covers exactly once.

BOS handling (recorded in the identity string):
* ``gptq``/``sliding`` tokenize the joined text with the tokenizer's defaults, as GPTQ does:
  OPT's tokenizer prepends ``</s>`` (287,645 WikiText-2 tokens), GPT-2/Pythia add nothing
  (287,644 for GPT-2). The first token of each window is context only.
* ``rolling`` encodes each document without special tokens and prefixes the first window with
  the tokenizer's BOS (else EOS) token, as lm-eval's ``prefix_token_id``, so every document
  token is predicted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kscale.evaluate.batching import ForwardStats, _accepts, forward_scored, model_device  # noqa: F401
from kscale.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """Model input ``ids[:-1]``; the last ``n_pred`` of the targets ``ids[1:]`` are scored."""

    ids: np.ndarray
    n_pred: int
    doc: int = 0  # index of the document it belongs to (rolling)
    start: int = 0  # position of ids[0] in the (joined) token stream


@dataclass(frozen=True)
class TokenStream:
    """A tokenized corpus for one protocol: documents concatenated, with per-token byte counts.

    ``token_bytes[i]`` is the number of UTF-8 bytes of the text that token ``i`` ends
    (from the fast tokenizer's offsets), so the bytes of any set of scored tokens sum to the
    bytes they cover. ``doc_starts`` has ``n_docs + 1`` entries.
    """

    ids: np.ndarray
    token_bytes: np.ndarray
    doc_starts: np.ndarray
    doc_words: np.ndarray
    doc_bytes: np.ndarray

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.doc_starts[i] : self.doc_starts[i + 1]]

    @property
    def n_docs(self) -> int:
        return len(self.doc_starts) - 1


# -------------------------------------------------------------------- detokenizers

def wikitext_detokenizer(text: str) -> str:
    """lm-evaluation-harness's WikiText detokenizer (``tasks/wikitext/preprocess_wikitext.py``):
    undo the `` @-@ `` number separators and the spaces around punctuation before scoring."""
    s = text.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for p in (":", ";", ".", "!", "?", ","):
        s = s.replace(f" {p} ", f"{p} ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176))
    s = s.replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ").replace(" 's", "'s")
    return s


DETOKENIZERS: Registry[Callable[[str], str]] = Registry("detokenizer")
DETOKENIZERS.register("wikitext2", wikitext_detokenizer)


# -------------------------------------------------------------------- protocols

@dataclass(frozen=True)
class Protocol:
    """A perplexity protocol.

    Attributes:
        name, version: recorded in rows (``gptq/v1``); bump the version when numbers change.
        level: ``joined`` (rows joined with ``"\\n\\n"``, tokenizer defaults) or ``document``.
        make_windows: ``(stream, seqlen, stride, prefix_token) -> list[Window]``.
        reference: what it reproduces.
    """

    name: str
    version: str
    level: str
    make_windows: Callable[..., list[Window]]
    reference: str


PROTOCOLS: Registry[Protocol] = Registry("perplexity protocol")


def gptq_windows(stream: TokenStream, seqlen: int, stride: int | None, prefix_token: int | None) -> list[Window]:
    """GPTQ ``opt_eval``: ``n // seqlen`` non-overlapping windows, the remainder dropped;
    each window predicts its ``seqlen - 1`` shifted tokens."""
    ids = stream.ids
    return [Window(ids[i * seqlen : (i + 1) * seqlen], seqlen - 1, 0, i * seqlen) for i in range(len(ids) // seqlen)]


def sliding_windows(stream: TokenStream, seqlen: int, stride: int | None, prefix_token: int | None) -> list[Window]:
    """Hugging Face "Perplexity of fixed-length models": windows of ``seqlen`` every ``stride``
    tokens; each window scores only the tokens the previous one did not, so every token after
    the first is scored once, with at least ``seqlen - stride`` tokens of context."""
    stride = stride or max(1, seqlen // 2)
    if stride > seqlen:
        raise ValueError(f"sliding stride must be <= seqlen; got stride={stride}, seqlen={seqlen}")
    ids, n = stream.ids, len(stream.ids)
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + seqlen, n)
        trg = end - prev_end  # new tokens in this window
        n_pred = min(trg, end - begin - 1)  # the window's first token has no prediction
        if n_pred > 0:
            out.append(Window(ids[begin:end], n_pred, 0, begin))
        prev_end = end
        if end == n:
            break
    return out


def rolling_windows(stream: TokenStream, seqlen: int, stride: int | None, prefix_token: int | None) -> list[Window]:
    """lm-eval ``loglikelihood_rolling`` (``utils.get_rolling_token_windows`` with
    ``context_len=1`` + ``make_disjoint_window``): per document, the first window is
    ``[prefix] + doc[:seqlen-1]`` predicting ``doc[:seqlen]``; later windows predict the next
    ``seqlen`` tokens (or the rest) from a full ``seqlen``-token input."""
    if prefix_token is None:
        raise ValueError("protocol 'rolling' needs a BOS or EOS token to prefix documents; the tokenizer has neither")
    out: list[Window] = []
    for d in range(stream.n_docs):
        toks = stream.doc(d)
        n = len(toks)
        if n == 0:
            continue
        first = min(seqlen, n)
        out.append(Window(np.concatenate([[prefix_token], toks[:first]]).astype(np.int64), first, d))
        predicted = first
        while predicted < n:
            pred_len = min(n - predicted, seqlen)
            end = predicted + pred_len
            out.append(Window(toks[end - seqlen - 1 : end], pred_len, d))
            predicted = end
    return out


PROTOCOLS.register("gptq", Protocol(
    "gptq", "v1", "joined", gptq_windows,
    "IST-DASLab/gptq datautils.get_wikitext2 + opt_eval (rows joined by '\\n\\n', n//seqlen windows)"))
PROTOCOLS.register("sliding", Protocol(
    "sliding", "v1", "joined", sliding_windows,
    "huggingface.co/docs/transformers/perplexity (strided sliding window)"))
PROTOCOLS.register("rolling", Protocol(
    "rolling", "v1", "document", rolling_windows,
    "lm-evaluation-harness wikitext task: loglikelihood_rolling over documents, word/byte perplexity"))


def apply_budget(windows: list[Window], stream: TokenStream, protocol: Protocol,
                 max_tokens: int | None, max_windows: int | None) -> list[Window]:
    """Cut windows to a budget. ``gptq``/``sliding`` get ``max_tokens`` applied to the stream
    before windowing (:func:`budget_stream`). ``rolling`` keeps whole documents while the
    predicted tokens stay within ``max_tokens``; when the first document alone is larger (PTB
    is one document) it keeps that document's leading windows up to the budget, and
    :func:`summarize_rolling` prorates its word count."""
    if protocol.level == "document" and max_tokens is not None:
        kept, total, last_doc = [], 0, -1
        for w in windows:
            if w.doc != last_doc:
                doc_len = int(stream.doc_starts[w.doc + 1] - stream.doc_starts[w.doc])
                if kept and total + doc_len > max_tokens:
                    break
                total += doc_len
                last_doc = w.doc
            kept.append(w)
        if len({w.doc for w in kept}) == 1 and total > max_tokens:  # one oversized document
            cut, n = [], 0
            for w in kept:
                if cut and n + w.n_pred > max_tokens:
                    break
                cut.append(w)
                n += w.n_pred
            kept = cut
        windows = kept
    if max_windows is not None:
        windows = windows[:max_windows]
    return windows


def budget_stream(stream: TokenStream, protocol: Protocol, max_tokens: int | None) -> TokenStream:
    if protocol.level != "joined" or max_tokens is None or max_tokens >= len(stream.ids):
        return stream
    return TokenStream(stream.ids[:max_tokens], stream.token_bytes[:max_tokens],
                       np.array([0, max_tokens]), stream.doc_words, stream.doc_bytes)


# -------------------------------------------------------------------- tokenization (+ disk cache)

def tokenizer_fingerprint(tokenizer) -> str:
    """A hash that changes when the tokenizer's ids could change (vocab, merges, specials)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([str(tokenizer.bos_token), str(tokenizer.eos_token)]).encode())
    return h.hexdigest()[:16]


def _char_to_byte(text: str) -> np.ndarray:
    """``cb[i]`` = UTF-8 bytes of ``text[:i]`` (length ``len(text) + 1``)."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
    return np.concatenate([[0], np.cumsum(widths, dtype=np.int64)])


def encode_with_bytes(tokenizer, text: str, add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and per-token byte counts of ``text`` (see :class:`TokenStream`)."""
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                        verbose=False)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    except (NotImplementedError, ValueError, TypeError):  # slow tokenizers have no offsets
        enc = tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)
        offsets = None
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    cb = _char_to_byte(text)
    if offsets is None or len(offsets) != len(ids):
        log.warning("tokenizer gives no offsets; spreading %d bytes evenly over %d tokens for bits-per-byte",
                    cb[-1], len(ids))
        per = np.full(len(ids), cb[-1] / max(len(ids), 1))
        return ids, per
    ends = np.maximum.accumulate(np.clip(offsets[:, 1], 0, len(text)))
    end_bytes = cb[ends]
    token_bytes = np.diff(np.concatenate([[0], end_bytes]))
    return ids, token_bytes.astype(np.float64)


def tokenize_corpus(tokenizer, corpus, protocol: Protocol, *, cache_dir: Path | None) -> TokenStream:
    """Tokenize ``corpus`` as ``protocol`` reads it, cached on disk by (tokenizer, corpus, level)."""
    if protocol.level == "joined":
        units = [corpus.joined("\n\n")]
        add_special = True
        originals = units
    else:
        detok = DETOKENIZERS.get(corpus.name) if corpus.name in DETOKENIZERS else (lambda s: s)
        originals = list(corpus.documents)
        units = [detok(d) for d in originals]
        add_special = False
    h = hashlib.sha256()
    for u in units:
        h.update(hashlib.sha256(u.encode()).digest())
    key = f"{tokenizer_fingerprint(tokenizer)}-{corpus.name}-{protocol.level}-{h.hexdigest()[:16]}"
    file = Path(cache_dir) / "tokens" / f"{key}.npz" if cache_dir else None
    if file is not None and file.exists():
        with np.load(file, allow_pickle=False) as z:
            return TokenStream(z["ids"], z["token_bytes"], z["doc_starts"], z["doc_words"], z["doc_bytes"])
    all_ids, all_bytes, starts = [], [], [0]
    for u in units:
        ids, tb = encode_with_bytes(tokenizer, u, add_special)
        all_ids.append(ids)
        all_bytes.append(tb)
        starts.append(starts[-1] + len(ids))
    # lm-eval counts words and bytes on the original (not detokenized) document.
    words = np.array([len(re.split(r"\s+", d)) for d in originals], dtype=np.int64)
    nbytes = np.array([len(d.encode("utf-8")) for d in originals], dtype=np.int64)
    stream = TokenStream(np.concatenate(all_ids), np.concatenate(all_bytes), np.array(starts, dtype=np.int64),
                         words, nbytes)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp.npz")
        np.savez(tmp, ids=stream.ids, token_bytes=stream.token_bytes, doc_starts=stream.doc_starts,
                 doc_words=stream.doc_words, doc_bytes=stream.doc_bytes)
        tmp.replace(file)
    return stream


# -------------------------------------------------------------------- scoring

def doc_limit(stream: TokenStream, max_docs: int | None) -> TokenStream:
    """The first ``max_docs`` documents of ``stream`` (lm-eval's ``limit`` for a rolling task)."""
    if max_docs is None or max_docs >= stream.n_docs:
        return stream
    end = int(stream.doc_starts[max_docs])
    return TokenStream(stream.ids[:end], stream.token_bytes[:end], stream.doc_starts[: max_docs + 1],
                       stream.doc_words[:max_docs], stream.doc_bytes[:max_docs])


def loglikelihood_rolling(model, documents: Sequence[Sequence[int]], *, max_length: int, prefix_token: int,
                          device=None, batch_size=1, progress: bool = False,
                          stats: ForwardStats | None = None) -> list[float]:
    """lm-eval ``loglikelihood_rolling``: per document, the summed log-likelihood of every token.

    ``documents`` are token ids (encoded without special tokens); ``max_length`` is the window
    (lm-eval's ``max_length``: the model's context); ``prefix_token`` is lm-eval's
    ``prefix_token_id`` (BOS, else EOS). Windows of all documents are batched together.
    """
    lens = [len(d) for d in documents]
    starts = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = np.concatenate([np.asarray(d, dtype=np.int64) for d in documents]) if documents else np.zeros(0, np.int64)
    k = len(documents)
    stream = TokenStream(ids, np.ones(len(ids)), starts, np.ones(k, np.int64), np.ones(k, np.int64))
    windows = rolling_windows(stream, max_length, None, prefix_token)
    out = [0.0] * k
    for i, logits, targets in forward_scored(model, windows, device=device, batch_size=batch_size,
                                             progress=progress, desc="rolling", stats=stats):
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        out[windows[i].doc] -= float(nll.double().sum())
    return out


@dataclass
class PerplexityResult:
    """Per-token NLLs in window order plus the bookkeeping for bpb and word/byte perplexity."""

    nll_tokens: np.ndarray  # nats per scored token
    bytes_scored: float
    n_windows: int
    word_ppl: float | None = None
    byte_ppl: float | None = None

    @property
    def ntok(self) -> int:
        return int(len(self.nll_tokens))

    @property
    def nll(self) -> float:
        return float(self.nll_tokens.mean())

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def bpb(self) -> float:
        return float(self.nll_tokens.sum() / math.log(2) / self.bytes_scored)


def _doc_coverage(stream: TokenStream, windows: Sequence[Window]) -> dict[int, float]:
    """Fraction of each scored document's tokens that the windows predict (1.0 = whole)."""
    pred: dict[int, int] = {}
    for w in windows:
        pred[w.doc] = pred.get(w.doc, 0) + w.n_pred
    return {d: n / max(1, int(stream.doc_starts[d + 1] - stream.doc_starts[d])) for d, n in pred.items()}


def scored_bytes(stream: TokenStream, windows: Sequence[Window], protocol: Protocol) -> float:
    """UTF-8 bytes covered by the scored tokens (lm-eval: whole original documents for rolling)."""
    if protocol.level == "document":
        total = 0.0
        for d, frac in _doc_coverage(stream, windows).items():
            if frac >= 1.0:
                total += float(stream.doc_bytes[d])
            else:  # budget-truncated document: bytes of the predicted tokens
                s = int(stream.doc_starts[d])
                total += float(stream.token_bytes[s : s + sum(w.n_pred for w in windows if w.doc == d)].sum())
        return total
    total = 0.0
    for w in windows:
        end = w.start + len(w.ids)
        total += float(stream.token_bytes[end - w.n_pred : end].sum())
    return total


def summarize_rolling(result: PerplexityResult, stream: TokenStream, windows: Sequence[Window]) -> None:
    """lm-eval aggregates: word_perplexity = exp(-sum ll / words), byte_perplexity = exp(-sum ll / bytes).

    Words are counted on the original documents (``re.split(r"\\s+", page)``), prorated by
    token coverage for a budget-truncated document."""
    cov = _doc_coverage(stream, windows)
    words = sum(float(stream.doc_words[d]) * min(1.0, f) for d, f in cov.items())
    total = float(result.nll_tokens.sum())
    result.word_ppl = math.exp(total / words)
    result.byte_ppl = math.exp(total / result.bytes_scored)
