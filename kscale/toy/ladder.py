"""The toy ladder: its size table, options, data sources, the on-disk cache and the provider.

A checkpoint of size ``s`` lives in
``default_cache_dir()/toy/<key>/<s>`` where ``<key>`` hashes everything that defines the
weights: architecture and the whole size table, language (or text file contents), training
recipe and seed, and what the weights depend on beyond those: the device type, and on the CPU
the pinned kernel selection, thread count and library versions (:mod:`kscale.toy.reproducible`:
CPU rungs train in a child process with those pinned, bit-identical on any x86-64 machine). Each directory is an ordinary Hugging Face checkpoint (``config.json``,
``model.safetensors``, ``tokenizer.json`` ...) plus ``train_stats.json`` (losses, timing,
entropy rate) and ``toy_options.json`` (the options that made it).

Checkpoints over training (issue 11): the same run also saves the rung at a fraction of its token
budget, the budget halved ``1 .. snapshots-1`` times, each a loadable Hugging Face checkpoint in
``<s>/revisions/<name>/`` with ``snapshot.json`` (step, tokens, loss). A revision is named by its
nominal tokens per parameter: ``tpp0.625 tpp1.25 tpp2.5 tpp5 tpp10 tpp20`` for the default
budget of 20 tokens/param, the last being the final checkpoint ``<s>`` itself; the names are the
same for every rung, and each snapshot's exact token count is in its ``snapshot.json``. Saving
touches no random state, so the final weights (and the cache key, which does not include
``snapshots``) are the same as without snapshots. A cache built before snapshots existed lacks
them: :meth:`ToyProvider.ensure` retrains those rungs when a revision is asked for and adds the
snapshots, leaving the cached final checkpoint untouched.

Concurrency: :meth:`ToyProvider.ensure` trains under a per-size file lock, into a temporary
directory beside the target, then renames it into place; the final directory therefore
either does not exist or is complete, and two sweep jobs never train the same size twice.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from kscale.data.corpus import TextCorpus
from kscale.paths import default_cache_dir, write_text_atomic
from kscale.toy.language import LanguageSpec, MarkovLanguage
from kscale.toy.reproducible import device_type, in_pinned_child, numerics_key, observed_numerics, train_in_child
from kscale.toy.tokenizer import EOS, SPECIAL_TOKENS, build_tokenizer, text_vocabulary
from kscale.toy.train import ARCHITECTURES, ToyShape, TrainSpec, build_model, n_params, train_model, train_steps

log = logging.getLogger(__name__)

#: Bump when the training code changes in a way that changes the weights: old caches go stale.
#: 2: CPU training pinned to ATen's AVX2 kernels, MKL's COMPATIBLE branch and one thread
#: (kscale.toy.reproducible); the key names those and the library versions.
CACHE_FORMAT = 2

#: The default ladder, smallest first: label = ``L<layers>-d<width>``. One shape family (issue 17
#: §1): two layers, width on a sqrt(2) grid rounded to multiples of 8 (16 .. 64), 8-wide heads,
#: one batch size (16 x 64 tokens), so optimizer steps grow with the token budget (190 .. 2198
#: steps). Parameter counts (GPT-2 architecture, 130 token ids, 64 positions, tied head once):
#: 9.7k, 19k, 32k, 66k, 113k, ~1.7-2.1x per rung, 12x in all.
#:
#: Why not the earlier ladder (L1-d4 L1-d8 L1-d16 L2-d24 L3-d32 L4-d48): it changed depth, width,
#: head count and batch size unevenly (4..32 sequences: 81 steps for the smallest rung, 1197 for the
#: largest), and its smallest rungs sat on the language's unigram and bigram plateaus; its 16-bit
#: reducible losses fell in steps (local log-log slopes -0.24 -0.69 -0.24 -1.46 -0.91). On this
#: family and the default language the slopes measured -0.21 -0.24 -0.21 (L2-d16 .. L2-d48).
#: Why not wider: 32-value block formats (q4_0, MX) fit every row only at widths that are
#: multiples of 32, and GGUF k-quants at multiples of 256; a two-layer ladder of widths
#: 32 .. 192 would be ~0.9M parameters at the top, ~60x the training time of L2-d64 (training cost
#: grows ~N**2 at a fixed tokens-per-parameter ratio), and 256-wide rows start at ~1.6M.
LADDER: dict[str, ToyShape] = {
    "L2-d16": ToyShape(n_layer=2, d_model=16, n_head=2, batch_size=16),  # ~9.7k params
    "L2-d24": ToyShape(n_layer=2, d_model=24, n_head=3, batch_size=16),  # ~19k
    "L2-d32": ToyShape(n_layer=2, d_model=32, n_head=4, batch_size=16),  # ~32k
    "L2-d48": ToyShape(n_layer=2, d_model=48, n_head=6, batch_size=16),  # ~66k
    "L2-d64": ToyShape(n_layer=2, d_model=64, n_head=8, batch_size=16),  # ~113k
}

#: Cheap rungs outside the default ladder (the first ones of the earlier ladder): seconds to
#: train, for smoke tests and quick runs (``model.sizes=[L1-d4]``); not part of the scaling study.
QUICK_RUNGS: dict[str, ToyShape] = {
    "L1-d4": ToyShape(n_layer=1, d_model=4, n_head=1, batch_size=4),  # ~1.0k params
    "L1-d8": ToyShape(n_layer=1, d_model=8, n_head=2, batch_size=8),  # ~2.4k
    "L1-d16": ToyShape(n_layer=1, d_model=16, n_head=2, batch_size=8),  # ~6.4k
}

#: Every size the toy family knows: the ladder, then the quick rungs.
SIZES: dict[str, ToyShape] = {**LADDER, **QUICK_RUNGS}

# SeedSequence spawn keys; training uses 1. "calib" is fresh text for calibrated methods (GPTQ,
# AWQ, imatrix), so they never see the evaluated split.
_SPLIT_KEYS = {"train": 4, "validation": 3, "test": 2, "calib": 5}
_SPLIT_ALIASES = {"valid": "validation", "val": "validation"}


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

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> ToyOptions:
        """Parse ``provider_options``; ``TrainSpec`` fields may be given at the top level."""
        options = dict(options or {})
        train_keys = {f.name for f in fields(TrainSpec)}
        own_keys = {f.name for f in fields(cls)} - {"train"}
        unknown = set(options) - train_keys - own_keys
        if unknown:
            raise ValueError(
                f"unknown toy provider option(s) {sorted(unknown)}; allowed: {sorted(train_keys | own_keys)}"
            )
        train = TrainSpec(**{k: options.pop(k) for k in list(options) if k in train_keys})
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
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("train", "language", "ladder")}
        return {**out, **self.train.to_dict(), "language": self.language.to_dict(),
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


def planned_tokens(size: str, opts: ToyOptions, revision: str | None = None) -> int:
    """Training tokens of ``size`` at ``revision`` by the schedule :func:`train_checkpoint` follows.

    The parameter count comes from the model built on the meta device (shapes only, no
    memory), under a forked RNG so the caller's random state is untouched.
    """
    import torch

    shape = opts.shape(size)
    j = opts.halvings(revision)
    vocab = len(data_source(opts).words) + len(SPECIAL_TOKENS)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        n = n_params(build_model(opts.architecture, shape, vocab, opts.train.seqlen, 0, opts.seed))
    steps = train_steps(opts.train, n, shape.batch_size)
    step = steps if j == 0 else snapshot_steps(steps, opts.snapshots)[j]
    return step * shape.batch_size * opts.train.seqlen


# ---------------------------------------------------------------------------- data sources
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


def entropy_rate(options: Mapping[str, Any] | None = None) -> float | None:
    """Exact entropy rate (nats/token) of the toy language the options describe; None for text files.

    This is the irreducible loss ``E`` a scaling-law fit of the toy ladder should recover.
    Read from a trained rung's ``train_stats.json`` when the ladder is cached (the value its
    trainer computed from the same language; building the language's transition matrix costs
    ~0.4 s, a sizeable part of a toy job's fixed cost), else computed.
    """
    opts = ToyOptions.from_mapping(options)
    if opts.text_path is None:
        for stats in sorted((default_cache_dir() / "toy" / opts.key()).glob("*/train_stats.json")):
            try:
                recorded = json.loads(stats.read_text()).get("entropy_rate")
            except (OSError, ValueError):  # a file being written, or damaged: compute instead
                continue
            if isinstance(recorded, float):
                return recorded
    return data_source(opts).entropy_rate


# ---------------------------------------------------------------------------- provider
class ToyProvider:
    """:class:`kscale.models.family.CheckpointProvider` that trains the toy ladder on demand.

    ``n_trained`` counts the models this process has trained (tests use it to prove cache hits).
    """

    def __init__(self) -> None:
        self.n_trained = 0

    def entropy_rate(self, options: Mapping[str, Any] | None = None) -> float | None:
        """The family's irreducible loss in nats/token (None when training on a text file);
        the sweep writes it into every toy row as ``entropy_rate``."""
        return entropy_rate(options)

    def revisions(self, options: Mapping[str, Any] | None = None) -> list[str]:
        """The revision names every rung has (fewest tokens first; the last is the final checkpoint)."""
        return list(ToyOptions.from_mapping(options).revisions())

    def locate(self, size: str, options: Mapping[str, Any] | None = None, revision: str | None = None) -> Path:
        """The checkpoint folder of ``size`` at ``revision`` (None or the final name: the rung itself)."""
        opts = ToyOptions.from_mapping(options)
        opts.shape(size)
        final = default_cache_dir() / "toy" / opts.key() / size
        j = opts.halvings(revision)
        return final if j == 0 else final / "revisions" / revision

    def n_tokens(self, size: str, options: Mapping[str, Any] | None = None, revision: str | None = None) -> int:
        """Tokens the checkpoint was (or will be) trained on: from its stats file once built,
        else from the training schedule (the same numbers; nothing is trained)."""
        path = self.locate(size, options, revision)
        for name in ("snapshot.json", "train_stats.json"):
            if (path / name).is_file():
                return int(json.loads((path / name).read_text())["n_tokens"])
        return planned_tokens(size, ToyOptions.from_mapping(options), revision)

    def ensure(
        self, sizes: Sequence[str] | None, options: Mapping[str, Any] | None = None,
        revisions: Sequence[str | None] | None = None,
    ) -> dict[str, Path]:
        """Train the sizes whose checkpoint is missing (smallest first); return ``size -> final dir``.

        ``revisions`` (names, None = final) must exist for every size too; a rung cached before
        its snapshots existed is trained again to add them (its final checkpoint is kept).
        Their folders are :meth:`locate` ``(size, options, revision)``.
        """
        from filelock import FileLock

        opts = ToyOptions.from_mapping(options)
        sizes = list(opts.ladder) if sizes is None else list(sizes)
        for s in sizes:
            opts.shape(s)
        wanted = sorted({r for r in (revisions or ()) if opts.halvings(r) > 0})
        if device_type(opts.device) == "cpu" and not in_pinned_child():
            todo = [s for s in sizes if not all(_complete(p) for p in self._paths(s, opts, wanted))]
            if todo:  # train where the numerics are pinned (kscale.toy.reproducible), then just locate
                self.n_trained += train_in_child(opts.to_mapping(), todo, wanted, opts.threads)
        out: dict[str, Path] = {}
        for size in sizes:
            path, *snaps = self._paths(size, opts, wanted)

            def missing() -> list[Path]:
                return [p for p in [path, *snaps] if not _complete(p)]

            if missing():
                path.parent.mkdir(parents=True, exist_ok=True)
                with FileLock(str(path.parent / f".{size}.lock")):
                    todo = missing()  # another job may have finished it meanwhile
                    if todo:
                        if path not in todo:
                            log.info("toy %s: cached without revisions %s; training it again to add them",
                                     size, ", ".join(p.name for p in todo))
                        self._train_into(size, path, opts, final_too=path in todo)
            out[size] = path
        return out

    def _paths(self, size: str, opts: ToyOptions, revisions: Sequence[str]) -> list[Path]:
        """The final folder of ``size``, then those of its ``revisions``."""
        final = default_cache_dir() / "toy" / opts.key() / size
        return [final, *(final / "revisions" / r for r in revisions)]

    def _train_into(self, size: str, path: Path, opts: ToyOptions, *, final_too: bool = True) -> None:
        # we hold the lock, so temp dirs of this size are leftovers of killed jobs
        for stale in path.parent.glob(f".{size}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        source = data_source(opts)
        tmp = Path(tempfile.mkdtemp(prefix=f".{size}.tmp-", dir=path.parent))
        try:
            stats = train_checkpoint(size, opts, tmp, source=source)
            if final_too:
                if path.exists():  # an incomplete leftover (no train_stats.json) from a killed job
                    shutil.rmtree(path)
                os.replace(tmp, path)
            else:
                _add_snapshots(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        self.n_trained += 1
        log.info("toy %s cached at %s (loss %.4f)", size, path, stats["final_loss"])


def _add_snapshots(new: Path, final: Path) -> None:
    """Move the snapshots of a fresh run ``new`` that ``final`` lacks into it; keep the rest of ``final``."""
    if (new / "model.safetensors").read_bytes() != (final / "model.safetensors").read_bytes():
        log.warning("toy %s: the cached final checkpoint differs from this run's (another device or "
                    "thread count); its new snapshots come from this run", final.name)
    for snap in sorted((new / "revisions").iterdir()) if (new / "revisions").is_dir() else ():
        target = final / "revisions" / snap.name
        if not _complete(target):
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(exist_ok=True)
            os.replace(snap, target)


def _complete(path: Path) -> bool:
    """A finished checkpoint: its stats file (written last) exists."""
    return (path / "train_stats.json").is_file() or (path / "snapshot.json").is_file()


def train_checkpoint(size: str, opts: ToyOptions, out_dir: Path, *, source=None) -> dict[str, Any]:
    """Train one size and save model + tokenizer + stats to ``out_dir`` (no caching, no locking)."""
    source = source or data_source(opts)
    shape = opts.shape(size)
    tokenizer = build_tokenizer(source.words)
    vocab = len(source.words) + len(SPECIAL_TOKENS)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    model = build_model(opts.architecture, shape, vocab, opts.train.seqlen, eos_id, opts.seed)
    steps = train_steps(opts.train, n_params(model), shape.batch_size)
    tokens_per_step = shape.batch_size * opts.train.seqlen
    names = {j: name for name, j in opts.revisions().items()}
    at_step: dict[int, list[int]] = {}
    for j, step in snapshot_steps(steps, opts.snapshots).items():
        at_step.setdefault(step, []).append(j)
    snapshots: dict[str, dict[str, Any]] = {}

    def save_snapshots(step: int, model) -> None:
        for j in at_step[step]:
            snap = out_dir / "revisions" / names[j]
            _save_hf(model, tokenizer, snap)
            info = {"size": size, "revision": names[j], "step": step, "n_tokens": step * tokens_per_step,
                    "budget_fraction": 2.0**-j, "key": opts.key()}
            snapshots[names[j]] = {"step": step, "n_tokens": step * tokens_per_step}
            (snap / "snapshot.json").write_text(json.dumps(info, indent=2))  # last: marks it complete

    result = train_model(
        model, source.batches(opts.seed), opts.train, batch_size=shape.batch_size,
        d_model=shape.d_model, device=opts.device, progress=opts.progress, desc=f"toy {size}",
        num_threads=opts.threads,
        snapshots={step: partial(save_snapshots, step) for step in at_step},
    )
    snapshots[opts.final_revision] = {"step": result.steps, "n_tokens": result.n_tokens}
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stats = {
        "size": size, "n_params": result.n_params, "n_tokens": result.n_tokens, "steps": result.steps,
        "final_loss": result.final_loss, "train_s": result.train_s, "snapshot_s": result.snapshot_s,
        "device": opts.device, "numerics": observed_numerics(),
        "entropy_rate": source.entropy_rate, "key": opts.key(),
        "losses": [round(x, 5) for x in result.losses],
        "revisions": dict(sorted(snapshots.items(), key=lambda kv: kv[1]["step"])),
    }
    options = {
        "architecture": opts.architecture, "seed": opts.seed, "language": opts.language.to_dict(),
        "train": opts.train.to_dict(), "text_path": opts.text_path, "max_vocab": opts.max_vocab,
        "shape": asdict(shape),
    }
    (out_dir / "toy_options.json").write_text(json.dumps(options, indent=2))
    # written last: its presence marks a complete checkpoint
    (out_dir / "train_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def _save_hf(model, tokenizer, out_dir: Path) -> None:
    """A loadable Hugging Face folder of ``model`` as it is now, mid-training (safetensors copies
    device tensors to the CPU; the model stays where it is)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


# ---------------------------------------------------------------------------- corpus
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
