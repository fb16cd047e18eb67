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

import functools
import logging
import os
import socket
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kscale.models.family import PROVIDERS, ModelFamily, get_family
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


def _hub_disabled() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.lru_cache(maxsize=1)
def _hub_unreachable_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached (None if it can, or if a proxy is configured).

    One TCP connect with a 3 s timeout, once per process: without it, an offline machine spends
    minutes in huggingface_hub's retries per checkpoint before failing deep inside a job. With a
    proxy configured a direct connect proves nothing, so the check is skipped.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urllib.parse.urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as err:
        return f"{endpoint} is unreachable ({err.strerror or err})"


def _in_hf_cache(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return False
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
) -> list[ModelSpec]:
    """Validate a family/sizes selection and return one :class:`ModelSpec` per size (no loading).

    Args:
        family: a registry name or a :class:`ModelFamily`.
        sizes: labels to run, in order; ``None``/``"all"`` = every size of the family.
        local_dir: a root folder with one sub-folder per size (named ``<size>``, the repo name
            ``opt-125m``, or ``org/repo``); every selected size must be found there.
        local_paths: ``size -> folder`` for individual sizes (wins over ``local_dir``).
        checkpoints: ``size -> hub id`` overriding/extending the family's table (generic families).
        provider_options: passed to the family's checkpoint provider's ``locate``.

    Raises:
        ModelConfigError: unknown family or size, a missing local folder, or a hub id that
            cannot be reached because the hub is disabled and the id is not cached.
    """
    try:
        fam = family if isinstance(family, ModelFamily) else get_family(family)
    except UnknownNameError as exc:
        raise ModelConfigError(str(exc)) from None
    if dtype not in DTYPES:
        raise ModelConfigError(f"model dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    table = dict(fam.sizes)
    table.update(checkpoints or {})
    local_paths = {str(k): v for k, v in (local_paths or {}).items()}
    if sizes is None or sizes == "all" or (isinstance(sizes, Sequence) and list(sizes) == ["all"]):
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

    provider = PROVIDERS.get(fam.provider) if fam.provider else None
    specs: list[ModelSpec] = []
    for size in selected:
        known = size in table
        if not known and not (fam.open_sizes and (size in local_paths or local_dir is not None)):
            raise ModelConfigError(
                f"unknown size {size!r} for family {fam.name!r}.{did_you_mean(size, list(table))} "
                f"Available: {', '.join(table)}"
                + (" (or give its checkpoint via checkpoints=/local_paths=)" if fam.open_sizes else "")
            )
        checkpoint = table.get(size, size)
        local: Path | None = None
        if size in local_paths:
            local = Path(local_paths[size]).expanduser()
            _check_local(local, f"family {fam.name!r} size {size!r} (local_paths)")
        elif local_dir is not None:
            cands = _candidates(Path(local_dir).expanduser(), size, checkpoint)
            found = [c for c in cands if (c / "config.json").is_file()]
            if not found:
                raise ModelConfigError(
                    f"family {fam.name!r} size {size!r}: no checkpoint folder with config.json under "
                    f"local_dir; looked for {', '.join(str(c) for c in cands)}"
                )
            local = found[0]
        elif provider is not None:
            local = Path(provider.locate(size, dict(provider_options or {})))
        elif not _in_hf_cache(checkpoint, revision):
            why = ("the hub is disabled (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)" if _hub_disabled()
                   else _hub_unreachable_reason())
            if why:
                raise ModelConfigError(
                    f"family {fam.name!r} size {size!r} needs hub id {checkpoint!r}, but {why} and it is "
                    "not in the local Hugging Face cache; set model.local_dir or model.local_paths, or go online"
                )
        specs.append(ModelSpec(
            family=fam.name, size=size, checkpoint=checkpoint,
            local_path=str(local) if local is not None else None, dtype=dtype, device=device,
            device_map=device_map, trust_remote_code=trust_remote_code, revision=revision,
        ))
    return specs


def prepare_models(specs: Sequence[ModelSpec], provider_options: Mapping[str, Any] | None = None) -> list[ModelSpec]:
    """Build missing provider checkpoints (e.g. train the toy ladder) before loading.

    Families without a provider are returned unchanged. For provider families, calls
    ``provider.ensure(sizes, options)`` once per family and points each spec at the returned folder.
    """
    by_family: dict[str, list[ModelSpec]] = {}
    for spec in specs:
        by_family.setdefault(spec.family, []).append(spec)
    out: dict[tuple[str, str], ModelSpec] = {}
    for fam_name, fam_specs in by_family.items():
        fam = get_family(fam_name)
        if fam.provider is None:
            continue
        dirs = PROVIDERS.get(fam.provider).ensure([s.size for s in fam_specs], dict(provider_options or {}))
        for s in fam_specs:
            if s.size not in dirs:
                raise ModelConfigError(f"provider {fam.provider!r} built no checkpoint for size {s.size!r}")
            out[(s.family, s.size)] = ModelSpec(**{**s.__dict__, "local_path": str(dirs[s.size])})
    return [out.get((s.family, s.size), s) for s in specs]


def _torch_dtype(name: str):
    import torch

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
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    log.info("loading %s/%s from %s (dtype=%s)", spec.family, spec.size, source, spec.dtype)
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
