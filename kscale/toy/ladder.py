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

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from kscale.paths import default_cache_dir
from kscale.toy.options import (
    BEYOND_LADDER,
    CACHE_FORMAT,
    LADDER,
    QUICK_RUNGS,
    SIZES,
    ToyOptions,
    revision_name,
    snapshot_steps,
)
from kscale.toy.reproducible import device_type, in_pinned_child, observed_numerics, train_in_child
from kscale.toy.sources import (
    SyntheticSource,
    TextSource,
    _corpus_cache_path,
    data_source,
    load_toy_corpus,
)
from kscale.toy.tokenizer import EOS, SPECIAL_TOKENS, build_tokenizer
from kscale.toy.train import build_model, n_params, train_model, train_steps

__all__ = [  # the options and sources are re-exported: callers import them from here
    "BEYOND_LADDER", "CACHE_FORMAT", "LADDER", "QUICK_RUNGS", "SIZES", "SPECIAL_TOKENS", "SyntheticSource", "TextSource",
    "ToyOptions", "ToyProvider", "_corpus_cache_path", "data_source", "entropy_rate", "load_toy_corpus",
    "planned_tokens", "revision_name", "snapshot_steps", "train_checkpoint",
]

log = logging.getLogger(__name__)


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

    def row_columns(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Columns every row of this build carries: the training precision (``train_bits_w``,
        ``train_bits_a``, ``train_bits_kv``, ``qat_from``; 16/16/16/0 = full precision)."""
        return ToyOptions.from_mapping(options).precision.to_row()

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
        step_context=None if opts.precision.is_full else opts.precision.forward,
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
    if not opts.precision.is_full:  # quantized training (full precision: the files as before it existed)
        options["train_precision"] = stats["train_precision"] = opts.precision.to_row()
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
