"""Tokens one evaluation reads and scores, counted with the evaluation's own windowing code.

Separate because counting needs tokenizers and the local data (the slow, cached part of a
plan: in-process caches plus JSON files under the cache dir), while the job arithmetic in
:mod:`kscale.estimate.jobs` only consumes the resulting :class:`EvalTokens`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kscale.data.corpus import load_corpus
from kscale.estimate.sizes import _local_folder
from kscale.paths import write_text_atomic
from kscale.registry import Registry

log = logging.getLogger(__name__)

#: zero-shot tasks with more items are counted on this many (seeded) and scaled: ~1 % error (see _zeroshot_tokens)
ZEROSHOT_SAMPLE_ITEMS = 300


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
        sampled: zero-shot tasks whose counts are scaled up from a seeded sample of
            :data:`ZEROSHOT_SAMPLE_ITEMS` items (counting all of HellaSwag's 40k requests with five
            tokenizers took most of a cold plan's minute).
    """

    per_task: Mapping[str, int]
    windows: Mapping[str, int]
    scored: Mapping[str, int]
    tokenizer: str
    exact: bool
    missing: tuple[str, ...] = ()
    sampled: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return int(sum(self.per_task.values()))

    @property
    def total_scored(self) -> int:
        return int(sum(self.scored.values()))


def _toy_tokenizer(plan: Any, spec: Any):
    # on use: kscale.estimate imports without torch
    from kscale.toy.ladder import ToyOptions, data_source
    from kscale.toy.tokenizer import build_tokenizer

    return build_tokenizer(data_source(ToyOptions.from_mapping(plan.provider_options)).words)


#: shared offline tokenizers, built once per process: a plan prices every size of a family
_BUILT: dict[tuple[str, str], Any] = {}


def _shared_tokenizer(builder_name: str, data_dir: Any):
    key = (builder_name, str(data_dir))
    if key not in _BUILT:
        # on use: kscale.estimate imports without torch
        from kscale.models import tokenizers

        _BUILT[key] = getattr(tokenizers, builder_name)(data_dir)
    return _BUILT[key]


def _shared(builder_name: str):
    def build(plan: Any, spec: Any):
        return _shared_tokenizer(builder_name, plan.data_dir)

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
    # on use: kscale.estimate imports without torch
    from kscale.models import get_family

    folder = _local_folder(plan, spec)
    if folder is not None and any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                      "vocab.json")):
        # on use: kscale.estimate imports without torch
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True), f"checkpoint:{folder.name}", True
    family = get_family(spec.family)
    for name in (family.provider, spec.family):
        if name and name in PLAN_TOKENIZERS:
            return PLAN_TOKENIZERS.get(name)(plan, spec), name, True
    try:  # the local Hugging Face cache, if the checkpoint was downloaded before
        # on use: kscale.estimate imports without torch
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec.checkpoint, local_files_only=True)
        return tok, f"hf-cache:{spec.checkpoint}", True
    except Exception:  # noqa: BLE001 - not cached: fall back to a stand-in
        pass
    return _shared_tokenizer("gpt2_tokenizer", plan.data_dir), "gpt2 (stand-in)", False


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
    # on use: kscale.estimate imports without torch
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
                             data["exact"], tuple(data["missing"]), tuple(data.get("sampled", ())))
            _TOKEN_CACHE[key] = out
            return out
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is recounted
    per_task: dict[str, int] = {}
    windows: dict[str, int] = {}
    scored: dict[str, int] = {}
    missing: list[str] = []
    sampled: list[str] = []
    for s in plan.eval.specs:
        try:
            if isinstance(s, PerplexitySpec):
                key_ = getattr(s, "key", s.dataset)
                windows[key_], per_task[key_], scored[key_] = _ppl_tokens(plan, family, tokenizer, s)
            else:
                per_task[s.task], scored[s.task], was_sampled = _zeroshot_tokens(plan, family, tokenizer, s, spec)
                if was_sampled:
                    sampled.append(s.task)
        except (FileNotFoundError, OSError, ValueError) as err:
            name = getattr(s, "dataset", None) or getattr(s, "task", "?")
            log.warning("plan: %s not counted (%s)", name, err)
            missing.append(name)
    out = EvalTokens(per_task, windows, scored, label, exact, tuple(missing), tuple(sampled))
    _TOKEN_CACHE[key] = out
    if disk is not None and not missing:
        try:  # counting the zero-shot requests of four tasks takes about a minute per tokenizer
            write_text_atomic(disk, json.dumps({"per_task": per_task, "windows": windows, "scored": scored,
                                                "tokenizer": label, "exact": exact, "missing": list(missing),
                                                "sampled": sampled}))
        except OSError:
            pass
    return out


def _token_cache_file(plan: Any, tokenizer: Any, key: tuple):
    """Where the token counts of one (tokenizer, eval) live in the cache dir (None without one)."""
    if getattr(plan, "cache_dir", None) is None:
        return None
    digest = hashlib.sha256(json.dumps([_fingerprint(tokenizer), *map(str, key)]).encode()).hexdigest()
    return Path(plan.cache_dir) / "plan-tokens" / f"{digest[:24]}.json"


def _corpus_options(plan: Any, family: Any, dataset: str) -> dict[str, Any]:
    return dict(plan.provider_options) if family.provider and family.provider == dataset else {}


def _ppl_tokens(plan, family, tokenizer, s) -> tuple[int, int, int]:
    """The protocol's windows on the local corpus: ``(windows, tokens read = sum(len - 1),
    tokens scored = sum(n_pred))``."""
    # on use: kscale.estimate imports without torch
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


def _zeroshot_tokens(plan, family, tokenizer, s, spec) -> tuple[int, int, bool]:
    """``(tokens read, tokens scored, sampled)`` over every request, as ``encode_pair`` splits it
    and ``request_window`` left-truncates it at the model context; a task of more than
    :data:`ZEROSHOT_SAMPLE_ITEMS` items is counted on a seeded sample and scaled up."""
    pairs, scale_read, scale_scored, sampled = _request_lengths(tokenizer, s.task, plan.data_dir, s.limit)
    max_len = _model_context(plan, family, spec)
    read = sum(min(c + n, max_len + 1) - 1 for c, n in pairs)
    return int(round(read * scale_read)), int(round(sum(n for _, n in pairs) * scale_scored)), sampled


_LENGTHS: dict[tuple, tuple[list[tuple[int, int]], float, float, bool]] = {}
_FINGERPRINTS: dict[int, tuple[Any, str]] = {}


def _fingerprint(tokenizer: Any) -> str:
    """:func:`tokenizer_fingerprint`, once per tokenizer object (it serialises the vocabulary)."""
    # on use: kscale.estimate imports without torch
    from kscale.evaluate.perplexity import tokenizer_fingerprint

    held = _FINGERPRINTS.get(id(tokenizer))
    if held is None or held[0] is not tokenizer:  # the object is kept, so its id is not reused
        held = _FINGERPRINTS[id(tokenizer)] = (tokenizer, tokenizer_fingerprint(tokenizer))
    return held[1]


def _request_lengths(tokenizer: Any, task: str, data_dir: Any, limit: int | None):
    """``(pairs of (context, continuation) token counts, read scale, scored scale, sampled)`` of a
    task's requests under one tokenizer. Independent of the model's context, so a plan counts
    each (tokenizer, task) once, however many families and sizes share the tokenizer (a cold
    ``experiment=dettmers2022 plan=true`` tokenized the same requests 16 times)."""
    key = (_fingerprint(tokenizer), task, str(data_dir), limit)
    if key in _LENGTHS:
        return _LENGTHS[key]
    items, scale_read, scale_scored, sampled = _task_sample(task, data_dir, limit)
    reqs = [r for it in items for r in it.requests]
    enc = lambda texts: [len(i) for i in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []  # noqa: E731
    full = [r for r in reqs if r.context]
    # encode_pair: trailing whitespace of the context moves to the continuation
    whole = enc([r.context + r.continuation for r in full])
    ctx = enc([r.context.rstrip() if r.context != r.context.rstrip() else r.context for r in full])
    pairs = [(c, w - c) for c, w in zip(ctx, whole)]
    pairs += [(1, n) for n in enc([r.continuation for r in reqs if not r.context])]  # BOS stands in
    _LENGTHS[key] = (pairs, scale_read, scale_scored, sampled)
    return _LENGTHS[key]


_SAMPLES: dict[tuple, tuple[list, float, float, bool]] = {}


def _task_sample(task: str, data_dir: Any, limit: int | None) -> tuple[list, float, float, bool]:
    """``(items to count, read scale, scored scale, sampled)``: a task of more than
    :data:`ZEROSHOT_SAMPLE_ITEMS` items is counted on a seeded sample, scaled by the task's
    characters over the sample's (tokens track characters closely: measured with GPT-2's
    tokenizer on the four tasks, within 1.4 % of a full count per task, 0.3 % in total, where
    scaling by the item count was off by up to 3.6 %). Once per task: the character sums over
    every item cost as much as tokenizing the sample."""
    key = (task, str(data_dir), limit)
    if key not in _SAMPLES:
        items = _task_items(task, data_dir, limit)
        scale_read = scale_scored = 1.0
        sampled = len(items) > ZEROSHOT_SAMPLE_ITEMS
        if sampled:
            pick = np.sort(np.random.default_rng(0).choice(len(items), ZEROSHOT_SAMPLE_ITEMS, replace=False))
            chars = lambda its: (sum(len(r.context) + len(r.continuation) for it in its for r in it.requests),  # noqa: E731
                                 sum(len(r.continuation) for it in its for r in it.requests))
            (all_read, all_cont), items = chars(items), [items[i] for i in pick]
            some_read, some_cont = chars(items)
            scale_read, scale_scored = all_read / max(1, some_read), all_cont / max(1, some_cont)
        _SAMPLES[key] = (items, scale_read, scale_scored, sampled)
    return _SAMPLES[key]


_ITEMS: dict[tuple, list] = {}


def _task_items(task: str, data_dir: Any, limit: int | None) -> list:
    """A task's items, parsed once per process (every tokenizer of a plan counts the same items)."""
    # on use: kscale.estimate imports without torch
    from kscale.evaluate.zeroshot import load_task_items

    key = (task, str(data_dir), limit)
    if key not in _ITEMS:
        _ITEMS[key] = load_task_items(task, data_dir=data_dir, source="local", limit=limit)
    return _ITEMS[key]


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

