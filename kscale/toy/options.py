"""The toy family's options: the size table (:data:`LADDER`, :data:`QUICK_RUNGS`) and
:class:`ToyOptions`, the validated ``provider_options`` whose :meth:`ToyOptions.key` names a
trained ladder's cache folder. Split from :mod:`kscale.toy.ladder` so the data sources and the
provider can both read the options without importing each other.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kscale.toy.language import LanguageSpec
from kscale.toy.lowbit import OPTION_DEFAULTS as PRECISION_OPTIONS
from kscale.toy.lowbit import TrainPrecision
from kscale.toy.reproducible import numerics_key
from kscale.toy.train import ARCHITECTURES, ToyShape, TrainSpec

#: Bump when the training code changes in a way that changes the weights: old caches go stale.
#: 2: CPU training pinned to ATen's AVX2 kernels, MKL's COMPATIBLE branch and one thread
#: (kscale.toy.reproducible); the key names those and the library versions.
CACHE_FORMAT = 2

#: The default ladder, smallest first: label = ``L<layers>-d<width>``. One shape family (issue 17
#: §1): two layers, width on a sqrt(2) grid rounded to multiples of 8 (16 .. 48), 8-wide heads,
#: one batch size (16 x 64 tokens), so optimizer steps grow with the token budget (190 .. 1289
#: steps). Parameter counts (GPT-2 architecture, 130 token ids, 64 positions, tied head once):
#: 9.7k, 19k, 32k, 66k (~1.7-2.1x per rung, 6.8x in all).
#:
#: Why not the earlier ladder (L1-d4 L1-d8 L1-d16 L2-d24 L3-d32 L4-d48): it changed depth, width,
#: head count and batch size unevenly (4..32 sequences: 81 steps for the smallest rung, 1197 for the
#: largest), and its smallest rungs sat on the language's unigram and bigram plateaus; its 16-bit
#: reducible losses fell in steps (local log-log slopes -0.24 -0.69 -0.24 -1.46 -0.91). On this
#: family and the default language they measured -0.19 -0.26 -0.22 (pinned training, 32k
#: held-out tokens). Why it stops at d48: see :data:`BEYOND_LADDER`.
#: Why not wider: 32-value block formats (q4_0, MX) fit every row only at widths that are
#: multiples of 32, and GGUF k-quants at multiples of 256; a two-layer ladder of widths
#: 32 .. 192 would be ~0.9M parameters at the top, ~60x the training time of L2-d64 (training cost
#: grows ~N**2 at a fixed tokens-per-parameter ratio), and 256-wide rows start at ~1.6M.
LADDER: dict[str, ToyShape] = {
    "L2-d16": ToyShape(n_layer=2, d_model=16, n_head=2, batch_size=16),  # ~9.7k params
    "L2-d24": ToyShape(n_layer=2, d_model=24, n_head=3, batch_size=16),  # ~19k
    "L2-d32": ToyShape(n_layer=2, d_model=32, n_head=4, batch_size=16),  # ~32k
    "L2-d48": ToyShape(n_layer=2, d_model=48, n_head=6, batch_size=16),  # ~66k
}

#: The next rung of the same family, outside the default ladder because it leaves the power law:
#: measured 16-bit reducible loss 0.467 nats against 0.792 for L2-d48 (local slope -0.99 after
#: -0.19 .. -0.26; a fit on the four ladder rungs predicts it 8 % too high). Its training (2198
#: steps) is the first to learn much of the language's trigram layer, a new regime rather than the
#: next step of the old one; a smooth ladder past it would need all rungs in that regime (~0.1M
#: .. 1M parameters, ~100x this ladder's training time). Kept so the break can be reproduced:
#: ``model.sizes=[L2-d16,L2-d24,L2-d32,L2-d48,L2-d64]``.
BEYOND_LADDER: dict[str, ToyShape] = {
    "L2-d64": ToyShape(n_layer=2, d_model=64, n_head=8, batch_size=16),  # ~113k
}

#: Cheap rungs outside the default ladder (the first ones of the earlier ladder): seconds to
#: train, for smoke tests and quick runs (``model.sizes=[L1-d4]``); not part of the scaling study.
QUICK_RUNGS: dict[str, ToyShape] = {
    "L1-d4": ToyShape(n_layer=1, d_model=4, n_head=1, batch_size=4),  # ~1.0k params
    "L1-d8": ToyShape(n_layer=1, d_model=8, n_head=2, batch_size=8),  # ~2.4k
    "L1-d16": ToyShape(n_layer=1, d_model=16, n_head=2, batch_size=8),  # ~6.4k
}

#: Every size the toy family knows: the ladder, the rung beyond it, then the quick rungs.
SIZES: dict[str, ToyShape] = {**LADDER, **BEYOND_LADDER, **QUICK_RUNGS}

@dataclass(frozen=True)
class ToyOptions:
    """``provider_options`` of the toy family, validated (see ``conf/model/toy.yaml``).

    Attributes:
        architecture: a name in :data:`ARCHITECTURES` (``gpt2``, ``opt``, ``llama``).
        seed: training seed (model initialisation and batch stream).
        device: where to train (``cpu``, ``cuda``, ...); its type is part of the cache key.
        language: :class:`LanguageSpec` of the synthetic language.
        train: :class:`TrainSpec` (``tokens_per_param``, ``seqlen``, ``lr`` ... set at top level).
        text_path: train on this local text file (word-level vocabulary) instead of the language.
        max_vocab: vocabulary size for ``text_path`` (most frequent words; others -> ``<unk>``).
        ladder: size table (label -> shape); defaults to :data:`SIZES` (the ladder and the quick rungs).
        corpus_seed: seed of the held-out corpus (independent of the training stream).
        corpus_tokens: default held-out corpus length (tokens).
        doc_tokens: tokens per held-out document; row_tokens: words per corpus row.
        progress: show tqdm bars while training.
        num_threads: torch CPU threads while training (None = 1). Part of the cache key: the
            reductions split by thread, so each count reaches its own weights
            (:mod:`kscale.toy.reproducible`).
        snapshots: checkpoints kept over training per rung, the final one included (the token
            budget halved ``snapshots - 1`` times: 6 -> 1/32 .. 1 of the budget; 1 = final only);
            not in the cache key (snapshots do not change the final weights).
        precision: :class:`~kscale.toy.lowbit.TrainPrecision` from the top-level options
            ``train_bits_w``, ``train_bits_a``, ``train_bits_kv`` and ``qat_from`` (quantized
            training); in the cache key only when below 16 bits, so full precision keeps its key.
    """

    architecture: str = "gpt2"
    seed: int = 0
    device: str = "cpu"
    language: LanguageSpec = field(default_factory=LanguageSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    text_path: str | None = None
    max_vocab: int = 2000
    ladder: Mapping[str, ToyShape] = field(default_factory=lambda: dict(SIZES))
    corpus_seed: int = 0
    corpus_tokens: int = 100_000
    doc_tokens: int = 4_000
    row_tokens: int = 100
    progress: bool = True
    num_threads: int | None = None
    snapshots: int = 6
    precision: TrainPrecision = field(default_factory=TrainPrecision)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> ToyOptions:
        """Parse ``provider_options``; ``TrainSpec`` fields may be given at the top level."""
        options = dict(options or {})
        train_keys = {f.name for f in fields(TrainSpec)}
        own_keys = ({f.name for f in fields(cls)} - {"train", "precision"}) | set(PRECISION_OPTIONS)
        unknown = set(options) - train_keys - own_keys
        if unknown:
            raise ValueError(
                f"unknown toy provider option(s) {sorted(unknown)}; allowed: {sorted(train_keys | own_keys)}"
            )
        train = TrainSpec(**{k: options.pop(k) for k in list(options) if k in train_keys})
        options["precision"] = TrainPrecision.from_options(
            {k: options.pop(k) for k in list(options) if k in PRECISION_OPTIONS})
        lang = options.pop("language", None) or {}
        if not isinstance(lang, LanguageSpec):
            lang_keys = {f.name for f in fields(LanguageSpec)}
            bad = set(lang) - lang_keys
            if bad:
                raise ValueError(f"unknown language option(s) {sorted(bad)}; allowed: {sorted(lang_keys)}")
            lang = LanguageSpec(**dict(lang))
        ladder = options.pop("ladder", None)
        if ladder is not None:
            ladder = {
                str(k): v if isinstance(v, ToyShape) else ToyShape(**dict(v)) for k, v in dict(ladder).items()
            }
            options["ladder"] = ladder
        opts = cls(language=lang, train=train, **options)
        ARCHITECTURES.get(opts.architecture)  # did-you-mean error for typos
        if opts.text_path is not None and not Path(opts.text_path).is_file():
            raise ValueError(f"text_path must be an existing text file; got {opts.text_path!r}")
        if opts.num_threads is not None and (isinstance(opts.num_threads, bool) or not isinstance(opts.num_threads, int)
                                             or opts.num_threads < 1):
            raise ValueError(f"num_threads must be an integer >= 1 or null; got {opts.num_threads!r}")
        if isinstance(opts.snapshots, bool) or not isinstance(opts.snapshots, int) or not 1 <= opts.snapshots <= 16:
            raise ValueError(f"snapshots must be an integer in 1..16 (checkpoints per rung); got {opts.snapshots!r}")
        return opts

    @property
    def threads(self) -> int:
        """Training threads (``num_threads``; None = 1, the reproducible default)."""
        return 1 if self.num_threads is None else int(self.num_threads)

    def to_mapping(self) -> dict[str, Any]:
        """Plain JSON-able ``provider_options`` that :meth:`from_mapping` turns back into these options."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("train", "language", "ladder", "precision")}
        return {**out, **self.train.to_dict(), **self.precision.to_options(), "language": self.language.to_dict(),
                "ladder": {k: asdict(v) for k, v in self.ladder.items()}}

    def revisions(self) -> dict[str, int]:
        """Revision name -> halvings of the token budget (0 = the final checkpoint), fewest tokens first."""
        tpp = self.train.tokens_per_param
        return {revision_name(tpp / 2**j): j for j in range(self.snapshots - 1, -1, -1)}

    @property
    def final_revision(self) -> str:
        """The name of the final checkpoint (the whole token budget)."""
        return revision_name(self.train.tokens_per_param)

    def halvings(self, revision: str | None) -> int:
        """Halvings of the budget for ``revision`` (None = final); ValueError naming the choices."""
        if revision is None:
            return 0
        table = self.revisions()
        if revision not in table:
            raise ValueError(
                f"unknown toy revision {revision!r}; this ladder saves {', '.join(table)} (nominal "
                f"tokens per parameter; snapshots={self.snapshots}, tokens_per_param={self.train.tokens_per_param:g})"
            )
        return table[revision]

    def key(self) -> str:
        """Hash of everything that determines the weights (not the progress bar or snapshots)."""
        if self.text_path is None:
            data: dict[str, Any] = {"language": self.language.to_dict()}
        else:
            digest = hashlib.sha256(Path(self.text_path).read_bytes()).hexdigest()
            data = {"text_sha256": digest, "max_vocab": self.max_vocab}
        payload = {
            "format": CACHE_FORMAT,
            "architecture": self.architecture,
            "ladder": {k: asdict(v) for k, v in sorted(self.ladder.items())},
            "data": data,
            "train": self.train.to_dict(),
            "seed": self.seed,
            "numerics": numerics_key(self.device, self.threads),
        }
        if not self.precision.is_full:  # full precision: the key it had before quantized training existed
            payload["train_precision"] = self.precision.key()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def shape(self, size: str) -> ToyShape:
        if size not in self.ladder:
            raise ValueError(f"unknown toy size {size!r}; allowed: {list(self.ladder)}")
        return self.ladder[size]


def revision_name(tokens_per_param: float) -> str:
    """``tpp<tokens per parameter>``: the same label on every rung, readable in result rows."""
    return f"tpp{tokens_per_param:g}"


def snapshot_steps(steps: int, snapshots: int) -> dict[int, int]:
    """Halvings ``j`` (1 .. snapshots-1) -> optimizer step ``max(1, round(steps / 2**j))``."""
    return {j: max(1, round(steps / 2**j)) for j in range(1, snapshots)}
