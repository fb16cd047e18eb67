"""Resolve (family, sizes) to checkpoints and load them, with every failure caught up front.

Two steps, so a sweep fails in seconds rather than after an hour of work on the first size:

1. :func:`resolve_models` turns config values into frozen :class:`ModelSpec` s and checks that
   every size exists and every checkpoint can be found (a local folder with ``config.json``,
   a provider path, or a hub id that is reachable — when the hub is disabled it must be in the
   local Hugging Face cache). It loads nothing.
2. :func:`load_model` loads one spec through ``AutoModelForCausalLM``/``AutoTokenizer`` — the
   same path for a user's hub model, a local folder and our ``save_pretrained`` test models.

``n_params`` is measured from the loaded module (``sum(p.numel() for p in model.parameters())``,
which counts tied input/output embeddings once), never parsed from the size label.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoModelForCausalLM, AutoTokenizer

from kscale.models.family import PROVIDERS, STEP_REVISION, ModelFamily, get_family
from kscale.net import hub_unavailable_reason
from kscale.registry import UnknownNameError, did_you_mean

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16", "auto")


class ModelConfigError(ValueError):
    """A model cannot be resolved: unknown family/size, missing local path, unreachable hub id."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load one model; hashable and JSON-friendly.

    Attributes:
        family, size: registry name and size label (as in result rows).
        checkpoint: the hub id (or provider id) the size stands for; recorded in rows.
        local_path: a local folder to load instead of the hub id (offline users, tests, toy).
        dtype: ``float32``/``float16``/``bfloat16``/``auto`` (the checkpoint's own dtype).
        device: where the model goes (``cpu``, ``cuda``, ``cuda:1``); ignored with ``device_map``.
        device_map: e.g. ``"auto"`` to shard a model larger than one GPU (accelerate).
        revision: which checkpoint over training (a hub branch such as Pythia's ``step1000``, or
            a toy snapshot ``tpp2.5``); None = the default/final one. Part of the model's identity.
        n_tokens: tokens the checkpoint was trained on; None when unknown. Known at resolve
            time from the family's rule, ``revision_tokens``, or the provider's schedule (toy).
    """

    family: str
    size: str
    checkpoint: str
    local_path: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    n_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ModelConfigError(f"model dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")

    @property
    def source(self) -> str:
        """What :func:`load_model` reads: the local folder if any, else the hub id."""
        return self.local_path or self.checkpoint


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    spec: ModelSpec
    n_params: int


def _in_hf_cache(repo_id: str, revision: str | None) -> bool:
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)


def _candidates(local_dir: Path, size: str, checkpoint: str) -> list[Path]:
    """Folders under ``local_dir`` that may hold ``size``: ``<size>``, ``<repo name>``, ``<org>/<repo>``."""
    names = [size, checkpoint.split("/")[-1], checkpoint]
    out: list[Path] = []
    for n in names:
        p = local_dir / n
        if p not in out:
            out.append(p)
    return out


def _check_local(path: Path, what: str) -> None:
    if not (path / "config.json").is_file():
        detail = "does not exist" if not path.exists() else "has no config.json"
        raise ModelConfigError(f"{what}: local checkpoint {path} {detail}")


def _revision_dirs(root: Path, revision: str | None) -> list[Path]:
    """Folders under a size's folder that may hold ``revision``: ``<root>/<revision>`` or
    ``<root>/revisions/<revision>`` (the toy cache's layout); the root itself for None."""
    return [root] if revision is None else [root / revision, root / "revisions" / revision]


def _local_for(
    fam: ModelFamily, size: str, revision: str | None, checkpoint: str,
    local_dir: str | os.PathLike | None, local_paths: Mapping[str, Any],
) -> Path | None:
    """The local folder of (size, revision) from ``local_paths`` / ``local_dir``, or None if neither is given.

    ``local_paths[size]`` is a folder (revisions in sub-folders named after them) or a mapping
    ``revision -> folder``; ``local_dir`` holds ``<size>/`` (or ``<repo name>/``, ``<org>/<repo>/``)
    with one sub-folder per revision.
    """
    what = f"family {fam.name!r} size {size!r}" + (f" revision {revision!r}" if revision is not None else "")
    if size in local_paths:
        given = local_paths[size]
        if isinstance(given, Mapping):
            table = {("null" if k is None else str(k)): v for k, v in given.items()}
            key = "null" if revision is None else revision
            if key not in table:
                raise ModelConfigError(f"{what}: local_paths.{size} maps revisions {sorted(table)}, not {key!r}")
            local = Path(table[key]).expanduser()
            _check_local(local, f"{what} (local_paths)")
            return local
        cands = _revision_dirs(Path(given).expanduser(), revision)
        found = [c for c in cands if (c / "config.json").is_file()]
        if not found:
            if len(cands) == 1:
                _check_local(cands[0], f"{what} (local_paths)")
            raise ModelConfigError(f"{what} (local_paths): no checkpoint folder with config.json; "
                                   f"looked for {', '.join(str(c) for c in cands)}")
        return found[0]
    if local_dir is not None:
        cands = [r for c in _candidates(Path(local_dir).expanduser(), size, checkpoint)
                 for r in _revision_dirs(c, revision)]
        found = [c for c in cands if (c / "config.json").is_file()]
        if not found:
            raise ModelConfigError(
                f"{what}: no checkpoint folder with config.json under local_dir; "
                f"looked for {', '.join(str(c) for c in cands)}"
            )
        return found[0]
    return None


def _revision_list(revision: str | None, revisions: Sequence[str | None] | str | None, family: str) -> list[str | None]:
    if revisions is None:
        return [revision]
    if revision is not None:
        raise ModelConfigError(f"family {family!r}: give revision or revisions, not both "
                               f"(revision={revision!r}, revisions={revisions!r})")
    out = [revisions] if isinstance(revisions, str) else list(revisions)
    out = [None if r is None else str(r) for r in out]
    if not out:
        raise ModelConfigError(f"family {family!r}: revisions is empty; give at least one (null = the final checkpoint)")
    dupes = sorted({str(r) for r in out if out.count(r) > 1})
    if dupes:
        raise ModelConfigError(f"family {family!r}: revisions must be unique; {dupes} repeated in {out}")
    return out


def _check_revision(fam: ModelFamily, revision: str | None, explicit: Mapping[str, int], provider: Any,
                    provider_options: Mapping[str, Any]) -> None:
    """Reject a revision the family cannot have, before anything loads (or a hub call is made)."""
    if revision is None:
        return
    if provider is not None:  # a provider saves a fixed set; an explicit token count adds none
        names = provider.revisions(provider_options) if hasattr(provider, "revisions") else []
        if revision not in names:
            raise ModelConfigError(
                f"unknown revision {revision!r} for family {fam.name!r}.{did_you_mean(revision, names)} "
                f"Available: {', '.join(names) or 'none (this provider saves no revisions)'}"
            )
        return
    if fam.revisions and revision not in fam.revisions and revision not in explicit:
        if fam.tokens_per_step is not None and STEP_REVISION.fullmatch(revision):
            raise ModelConfigError(
                f"family {fam.name!r} publishes no revision {revision!r}; it has "
                f"{_summarise(fam.revisions)}"
            )
        raise ModelConfigError(
            f"family {fam.name!r}: revision {revision!r} must look like step<N> (one of "
            f"{_summarise(fam.revisions)}), or give its training tokens in revision_tokens"
        )


def _summarise(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 12 else f"{', '.join(names[:12])}, ..., {names[-1]} ({len(names)} in all)"


def resolve_models(
    family: str | ModelFamily,
    sizes: Sequence[str] | str | None = None,
    *,
    local_dir: str | os.PathLike | None = None,
    local_paths: Mapping[str, str | os.PathLike] | None = None,
    checkpoints: Mapping[str, str] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    provider_options: Mapping[str, Any] | None = None,
    revisions: Sequence[str | None] | str | None = None,
    revision_tokens: Mapping[str, int] | None = None,
    check_hub: bool = True,
) -> list[ModelSpec]:
    """Validate a family/sizes selection and return one :class:`ModelSpec` per (size, revision)
    (no loading), size-major: every revision of the first size, then the next size.

    Args:
        family: a registry name or a :class:`ModelFamily`.
        sizes: labels to run, in order; ``"all"`` = every size of the family; ``None`` = every
            size, or only the sizes ``local_paths`` names when it names some (and no ``local_dir``).
        local_dir: a root folder with one sub-folder per size (named ``<size>``, the repo name
            ``opt-125m``, or ``org/repo``); every selected size must be found there. A revision
            ``r`` of a size is the sub-folder ``<size>/<r>/`` (or ``<size>/revisions/<r>/``).
        local_paths: ``size -> folder`` for individual sizes (wins over ``local_dir``); with
            revisions, the folder holds one sub-folder per revision, or the value is a mapping
            ``revision -> folder`` (key ``null`` = the final checkpoint).
        checkpoints: ``size -> hub id`` overriding/extending the family's table (generic families).
        provider_options: passed to the family's checkpoint provider's ``locate``.
        revision: one checkpoint over training for every size (a hub branch); None = final.
        revisions: several (None entries = final); each (size, revision) is its own spec.
            Provider families accept the names their provider saves (toy: ``tpp0.625`` ..
            ``tpp20``); families with a published list (Pythia ``step<N>``) accept those, or
            any name whose token count ``revision_tokens`` gives.
        revision_tokens: ``revision -> training tokens``, overriding the family's rule
            (Pythia: ``step<N>`` -> ``N * 2,097,152``); recorded as ``n_tokens``.

    Raises:
        ModelConfigError: unknown family, size or revision, a missing local folder, or a hub
            id that cannot be reached because the hub is disabled and the id is not cached.
    """
    try:
        fam = family if isinstance(family, ModelFamily) else get_family(family)
    except UnknownNameError as exc:
        raise ModelConfigError(str(exc)) from None
    if dtype not in DTYPES:
        raise ModelConfigError(f"model dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    table = {**fam.sizes, **(checkpoints or {})}
    local_paths = {str(k): v for k, v in (local_paths or {}).items()}
    selected = _select_sizes(fam, sizes, table, local_paths, local_dir)
    provider = PROVIDERS.get(fam.provider) if fam.provider else None
    options = dict(provider_options or {})
    revs = _revision_list(revision, revisions, fam.name)
    explicit = _explicit_tokens(revision_tokens)
    try:
        for rev in revs:
            _check_revision(fam, rev, explicit, provider, options)
    except ValueError as exc:  # a provider's own option errors
        raise ModelConfigError(str(exc)) from None
    specs: list[ModelSpec] = []
    for size in selected:
        checkpoint = table.get(size, size)
        for rev in revs:
            # one checkpoint layout per (size, revision): the user's folder, a provider's, or the hub
            local = _local_for(fam, size, rev, checkpoint, local_dir, local_paths)
            user_local = local is not None
            if local is None and provider is not None:
                local = Path(provider.locate(size, options) if rev is None else provider.locate(size, options, rev))
            elif local is None and check_hub:
                _check_hub_checkpoint(fam, size, checkpoint, rev)
            specs.append(ModelSpec(
                family=fam.name, size=size, checkpoint=checkpoint,
                local_path=str(local) if local is not None else None, dtype=dtype, device=device,
                device_map=device_map, trust_remote_code=trust_remote_code, revision=rev,
                n_tokens=_n_tokens(fam, size, rev, explicit, None if user_local else provider, options),
            ))
    return specs


def _select_sizes(fam: ModelFamily, sizes: Sequence[str] | str | None, table: Mapping[str, str],
                  local_paths: Mapping[str, Any], local_dir: Any) -> list[str]:
    """The size labels to run, validated: unique, known to the family (an open family such as
    ``llama`` accepts any label whose checkpoint is given locally)."""
    if sizes is None and local_paths and local_dir is None:
        # a checkpoint named for some sizes is a choice of sizes: the others are not fetched
        # from the hub behind the user's back (model.sizes=all asks for every size)
        selected = [s for s in table if s in local_paths] + [s for s in local_paths if s not in table]
    elif sizes is None or sizes == "all" or (isinstance(sizes, Sequence) and list(sizes) == ["all"]):
        selected = list(table) + [s for s in local_paths if s not in table]
    elif isinstance(sizes, str):
        selected = [sizes]
    else:
        selected = [str(s) for s in sizes]
    if not selected:
        raise ModelConfigError(f"family {fam.name!r}: no sizes selected and none known")
    dupes = sorted({s for s in selected if selected.count(s) > 1})
    if dupes:
        raise ModelConfigError(f"family {fam.name!r}: sizes must be unique; {dupes} repeated in {selected}")
    for s in local_paths:
        if s not in table and not fam.open_sizes:
            raise ModelConfigError(
                f"local_paths names size {s!r}, which family {fam.name!r} does not have."
                f"{did_you_mean(s, list(table))} Available: {', '.join(table)}"
            )
    for size in selected:
        if size not in table and not (fam.open_sizes and (size in local_paths or local_dir is not None)):
            raise ModelConfigError(
                f"unknown size {size!r} for family {fam.name!r}.{did_you_mean(size, list(table))} "
                f"Available: {', '.join(table)}"
                + (" (or give its checkpoint via checkpoints=/local_paths=)" if fam.open_sizes else "")
            )
    return selected


def _explicit_tokens(revision_tokens: Mapping[str, int] | None) -> dict[str, int]:
    """``revision_tokens`` validated: revision name -> training tokens (an integer >= 0)."""
    explicit: dict[str, int] = {}
    for name, tokens in (revision_tokens or {}).items():
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ModelConfigError(f"revision_tokens.{name} must be an integer >= 0 (training tokens); got {tokens!r}")
        explicit[str(name)] = tokens
    return explicit


def _check_hub_checkpoint(fam: ModelFamily, size: str, checkpoint: str, rev: str | None) -> None:
    """A hub checkpoint must be in the local Hugging Face cache or the hub must be usable."""
    if _in_hf_cache(checkpoint, rev):
        return
    why = hub_unavailable_reason()
    if why:
        at = f" at revision {rev!r}" if rev is not None else ""
        raise ModelConfigError(
            f"family {fam.name!r} size {size!r} needs hub id {checkpoint!r}{at}, but {why} and it "
            "is not in the local Hugging Face cache; set model.local_dir or model.local_paths, or go online"
        )


def _n_tokens(fam: ModelFamily, size: str, rev: str | None, explicit: Mapping[str, int],
              provider: Any, options: Mapping[str, Any]) -> int | None:
    """Training tokens of (size, revision): given explicitly, else the provider's schedule (for a
    checkpoint it builds; None for a user's folder), else the family's rule."""
    if rev in explicit:
        return explicit[rev]
    if provider is not None and hasattr(provider, "n_tokens"):
        return provider.n_tokens(size, dict(options), rev)
    return fam.revision_tokens(rev)


def prepare_models(specs: Sequence[ModelSpec], provider_options: Mapping[str, Any] | None = None) -> list[ModelSpec]:
    """Build missing provider checkpoints (e.g. train the toy ladder) before loading.

    Families without a provider are returned unchanged. For provider families, calls
    ``provider.ensure(sizes, options[, revisions])`` once per family, points each spec at its
    folder (``provider.locate(size, options, revision)`` for a revision) and fills a missing
    ``n_tokens`` from the built checkpoint when the provider reports it (``provider.n_tokens``).
    """
    by_family: dict[str, list[ModelSpec]] = {}
    for spec in specs:
        by_family.setdefault(spec.family, []).append(spec)
    out: dict[tuple[str, str, str | None], ModelSpec] = {}
    for fam_name, fam_specs in by_family.items():
        fam = get_family(fam_name)
        if fam.provider is None:
            continue
        provider = PROVIDERS.get(fam.provider)
        opts = dict(provider_options or {})
        sizes = list(dict.fromkeys(s.size for s in fam_specs))
        revs = list(dict.fromkeys(s.revision for s in fam_specs))
        # providers without revisions keep the two-argument call
        dirs = provider.ensure(sizes, opts) if revs == [None] else provider.ensure(sizes, opts, revisions=revs)
        for s in fam_specs:
            if s.size not in dirs:
                raise ModelConfigError(f"provider {fam.provider!r} built no checkpoint for size {s.size!r}")
            path = dirs[s.size] if s.revision is None else provider.locate(s.size, opts, s.revision)
            n_tokens = s.n_tokens
            if n_tokens is None and hasattr(provider, "n_tokens"):
                n_tokens = provider.n_tokens(s.size, opts, s.revision)
            out[(s.family, s.size, s.revision)] = ModelSpec(
                **{**s.__dict__, "local_path": str(path), "n_tokens": n_tokens})
    return [out.get((s.family, s.size, s.revision), s) for s in specs]


def _torch_dtype(name: str):
    return "auto" if name == "auto" else getattr(torch, name)


def count_params(model) -> int:
    """All parameters of ``model``, tied tensors once (``nn.Module.parameters`` de-duplicates)."""
    return int(sum(p.numel() for p in model.parameters()))


def model_context(model) -> int | None:
    """The longest input the model's positions allow, or None (ALiBi/unbounded, e.g. BLOOM)."""
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load ``spec`` in eval mode (no dropout) with its tokenizer.

    Local folders are read with ``local_files_only=True`` and safetensors when present;
    ``trust_remote_code`` is passed only as the spec says (default False).
    """
    source = spec.source
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.local_path is not None:
        path = Path(spec.local_path)
        if not (path / "config.json").is_file():
            hint = " (run kscale.models.prepare_models first to build it)" if get_family(spec.family).provider else ""
            raise ModelConfigError(f"family {spec.family!r} size {spec.size!r}: no checkpoint at {path}{hint}")
        kwargs["local_files_only"] = True
        if any(path.glob("*.safetensors")):
            kwargs["use_safetensors"] = True
    elif spec.revision:
        kwargs["revision"] = spec.revision
    at = f"@{spec.revision}" if spec.revision else ""
    log.info("loading %s/%s%s from %s (dtype=%s)", spec.family, spec.size, at, source, spec.dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs_without(kwargs, "use_safetensors"))
    model_kwargs = dict(kwargs, dtype=_torch_dtype(spec.dtype))
    if spec.device_map:
        model_kwargs["device_map"] = spec.device_map
    model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    if not spec.device_map:
        model.to(spec.device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, n_params=count_params(model))


def kwargs_without(kwargs: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in keys}
