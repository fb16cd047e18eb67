"""The one OmegaConf-aware library module: a composed Hydra config -> a frozen :class:`SweepPlan`.

Everything is validated here, before any model is loaded or any file is written, and every
error names the override to change, the value received and what is allowed
(``invalid override bits=17: bits must be an integer in 2..8, or 16 ...``), because a typo in a
sweep config should cost seconds, not a cluster allocation.

Config keys read (``conf/sweep.yaml`` documents each):
    :data:`SWEEP_KEYS` (the top level of ``conf/sweep.yaml``; anything else, such as a typo'd
    ``+bitz=4``, is rejected), model.* (conf/model), eval.* (conf/eval), method_options.<method>.*
    (conf/method_options/<method>.yaml), wandb.{mode, project, entity, dir, tags}.

Method knowledge stays in the method objects (``kscale.quant.METHODS``): this module only asks
each method to validate its options and its specs. Evaluation is bound to the model: a corpus
or task must belong to the model's tokenizer (a family whose checkpoints kscale builds, such as
``toy``, evaluates on its own language only; every other family on natural text only).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kscale.registry import did_you_mean
from kscale.sweep.grid import QUANT_AXES, as_list, expand_cells
from kscale.sweep.plan import WANDB_MODES, EvalPlan, SweepPlan, TrackingSpec

log = logging.getLogger(__name__)

#: Keys of the model group that ``resolve_models`` understands.
MODEL_KEYS: tuple[str, ...] = (
    "name", "sizes", "local_dir", "local_paths", "checkpoints", "dtype", "device", "device_map",
    "trust_remote_code", "revision", "revisions", "revision_tokens", "provider_options",
)
#: Keys of the model group that describe the family for planning, not for loading.
MODEL_INFO_KEYS: tuple[str, ...] = ("n_params", "vocab_size", "description")
#: Top-level keys of a sweep config (conf/sweep.yaml; a test keeps the two equal). A key
#: outside this set is a typo that would otherwise be ignored while the sweep runs.
SWEEP_KEYS: tuple[str, ...] = (
    "name", "results_dir", "data_dir", "cache_dir", *QUANT_AXES, "method_options", "rerun",
    "progress", "report", "plan", "plan_out", "plan_device", "plan_devices", "plan_probe", "wandb",
    "model", "eval",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Settings that are true or false. Anything else is rejected: a string such as ``rerun=no`` is
#: truthy, so reading it with ``bool()`` would silently re-run every finished cell.
BOOL_SETTINGS: tuple[str, ...] = ("rerun", "progress", "report", "plan", "plan_probe")
#: The same rule for the model group's switches.
MODEL_BOOL_KEYS: tuple[str, ...] = ("trust_remote_code",)


class ConfigError(ValueError):
    """An invalid sweep configuration (raised before anything is loaded or written)."""


def to_container(cfg: Any) -> dict[str, Any]:
    """A resolved plain dict of ``cfg`` without the ``hydra`` node (wandb config, provenance)."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        return {k: v for k, v in dict(cfg).items() if k != "hydra"}
    data: dict[str, Any] = {}
    for key in cfg:  # per key, so Hydra's own (partly unset) node is never resolved
        if key == "hydra":
            continue
        node = cfg._get_node(key)
        if OmegaConf.is_config(node):
            data[key] = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        else:
            data[key] = cfg[key]
    return data


def _hydra_choice(cfg: Any, group: str) -> str | None:
    """The option chosen for a config group (``eval=toy`` -> ``toy``), if Hydra composed ``cfg``."""
    try:
        from omegaconf import OmegaConf

        choice = OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default=None)
        if choice is not None:
            return str(choice)
    except Exception:  # noqa: BLE001 - not a Hydra config
        pass
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return HydraConfig.get().runtime.choices.get(group)
    except Exception:  # noqa: BLE001
        pass
    return None


def check_bool(setting: str, value: Any) -> bool:
    """``value`` if it is a real boolean, else a :class:`ConfigError` naming the setting."""
    if not isinstance(value, bool):
        raise ConfigError(f"invalid override {setting}={value!r}: {setting} is a switch; "
                          "allowed values: true, false")
    return value


def _check_axis_values(c: Mapping[str, Any]) -> None:
    """Validate each grid axis value on its own, so the error names the override."""
    from kscale.quant import FORMATS, METHODS, QuantSpec

    probes = {
        "method": METHODS.get,  # unknown names raise with did-you-mean
        "format": FORMATS.get,
        "bits": lambda v: QuantSpec(bits=v),
        "dtype": lambda v: QuantSpec(bits=4, dtype=v),
        "blocksize": lambda v: QuantSpec(bits=4, blocksize=v),
        "centered": lambda v: QuantSpec(bits=4, centered=v),
        "scale_bits": lambda v: QuantSpec(bits=4, scale_bits=v),
        "outlier_frac": lambda v: QuantSpec(bits=4, outlier_frac=v),
    }
    from kscale.quant.runtime import RuntimeQuantSpec

    for kind in ("act", "kv"):  # activation / KV-cache precision (issue 20 §1)
        probes[f"{kind}_bits"] = lambda v, k=kind: RuntimeQuantSpec(bits=v, kind=k)
        probes[f"{kind}_granularity"] = lambda v, k=kind: RuntimeQuantSpec(8, v, kind=k)
        probes[f"{kind}_dtype"] = lambda v, k=kind: RuntimeQuantSpec(8, dtype=v, kind=k)
    for axis in QUANT_AXES:
        if axis not in c:
            continue
        values = as_list(c[axis])
        if not values:
            raise ConfigError(f"invalid override {axis}=[]: give at least one value")
        for value in values:
            if axis == "seed":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"invalid override seed={value}: seeds are integers >= 0")
            elif axis == "imatrix":
                if value is not None and not isinstance(value, bool):
                    raise ConfigError(f"invalid override imatrix={value}: true or false")
            elif axis in probes:
                try:
                    probes[axis](value)
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"invalid override {axis}={value}: {err}") from None


def _check_method_options(c: Mapping[str, Any]) -> dict[str, Any]:
    """Each method's options, validated by the method's own config class."""
    from kscale.quant import METHODS

    method_options = c.get("method_options") or {}
    if not isinstance(method_options, Mapping):
        raise ConfigError("invalid method_options: a mapping {method: {option: value}}")
    for name, options in method_options.items():
        try:
            METHODS.get(name)  # unknown names raise with did-you-mean
        except KeyError as err:
            raise ConfigError(f"invalid method_options.{name}: {err}") from None
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(f"invalid method_options.{name}={options!r}: a mapping of options")
    for name in as_list(c.get("method", "rtn")):
        try:
            METHODS.get(name).configure(method_options.get(name) or {})
        except ValueError as err:
            raise ConfigError(f"invalid override method_options.{name}: {err}") from None
    return dict(method_options)


def _check_bound_eval(family_name: str, ev: EvalPlan, cells: Sequence[Any],
                      method_options: Mapping[str, Any], data_dir: Path) -> None:
    """Reject corpora, tasks and calibration text that do not belong to the model's tokenizer.

    A family whose checkpoints kscale builds (a *provider* family: ``toy``) speaks only its
    provider's language, so it may be scored and calibrated on that corpus only; every other
    family reads natural text, so no provider's corpus may be used with it. The rule needs no
    download and no tokenizer, so it runs before anything loads."""
    from kscale.evaluate import PerplexitySpec
    from kscale.models import PROVIDERS, get_family
    from kscale.quant import METHODS

    family = get_family(family_name)
    own = family.provider
    used = [(f"eval perplexity dataset {s.dataset!r}", s.dataset) for s in ev.specs
            if isinstance(s, PerplexitySpec)]
    tasks = [s.task for s in ev.specs if not isinstance(s, PerplexitySpec)]
    for name in sorted({cell.method for cell in cells}):
        method = METHODS.get(name)
        if method.needs_calibration:
            config = method.configure(method_options.get(name) or {}, own_corpus=own)
            used.append((f"method_options.{name}.dataset {config.calibration.dataset!r}",
                         config.calibration.dataset))
    for what, corpus in used:
        if own and corpus != own:
            raise ConfigError(
                f"invalid combination model={family_name} with {what}: the {family_name} models' "
                f"tokenizer only speaks the {own!r} language, so {corpus!r} would be scored through "
                f"a vocabulary it was not written in. Use eval={family.default_eval or own} "
                f"(corpus {own!r}), or a natural-language family")
        if not own and corpus in PROVIDERS.names():
            raise ConfigError(
                f"invalid combination model={family_name} with {what}: {corpus!r} is the synthetic "
                f"language of the {corpus!r} family and means nothing through {family_name}'s "
                f"tokenizer. Use eval={family.default_eval or 'wikitext2'} or another natural-text eval")
    if own and tasks:
        raise ConfigError(
            f"invalid combination model={family_name} with zero-shot tasks {', '.join(tasks)}: they "
            f"are English text and the {family_name} tokenizer only speaks the {own!r} language")
    _check_data_available(ev, [c for what, c in used if what.startswith("method_options") and c != own],
                          data_dir)


def _check_data_available(ev: EvalPlan, calibration_corpora: Sequence[str], data_dir: Path) -> None:
    """Fail fast when an eval corpus, task or calibration text is neither on disk nor reachable
    (offline, one clear error instead of minutes of hub retries inside a job)."""
    from kscale.data import check_available
    from kscale.evaluate import check_eval_data

    try:
        check_eval_data(ev.specs, data_dir, ev.source)
    except ValueError as err:
        raise ConfigError(f"invalid eval={ev.name}: {err}") from None
    for corpus in dict.fromkeys(calibration_corpora):
        try:
            check_available(corpus, data_dir=data_dir, source="auto")
        except ValueError as err:
            raise ConfigError(f"invalid calibration corpus {corpus!r}: {err}") from None


def _model_plan(model: Mapping[str, Any], *, check_hub: bool = True) -> tuple[list[Any], dict[str, Any]]:
    from kscale.models import ModelConfigError, resolve_models
    from kscale.models.placement import resolve_device, resolve_dtype

    if not isinstance(model, Mapping) or not model.get("name"):
        raise ConfigError("invalid model config: choose a family with model=<name> "
                          "(conf/model/<name>.yaml needs a 'name' key)")
    unknown = sorted(set(model) - set(MODEL_KEYS) - set(MODEL_INFO_KEYS))
    if unknown:
        raise ConfigError(f"invalid model config: unknown keys {unknown}. "
                          f"Allowed: {', '.join(MODEL_KEYS + MODEL_INFO_KEYS)}")
    for key in MODEL_BOOL_KEYS:
        if model.get(key) is not None:
            check_bool(f"model.{key}", model[key])
    kw = {k: v for k, v in model.items()
          if k in MODEL_KEYS and k not in ("name", "sizes") and v is not None}
    kw["local_paths"] = {k: v for k, v in (kw.get("local_paths") or {}).items() if v is not None}
    try:
        kw["device"] = resolve_device(model.get("device"))
        kw["dtype"] = resolve_dtype(model.get("dtype"), kw["device"])
    except ValueError as err:
        raise ConfigError(f"invalid model config: {err}") from None
    sizes = model.get("sizes")
    provider_options = _training_options(model["name"], dict(kw.get("provider_options") or {}))
    if "provider_options" in kw:
        kw["provider_options"] = provider_options
    try:
        specs = resolve_models(model["name"], sizes, check_hub=check_hub, **kw)
    except ModelConfigError as err:
        raise ConfigError(f"invalid override model={model['name']} "
                          f"(model.sizes={sizes if sizes is not None else 'all'}): {err}") from None
    except TypeError as err:  # a model key this version of resolve_models does not take
        raise ConfigError(f"invalid model config for model={model['name']}: {err}") from None
    return specs, provider_options


def _training_options(family_name: str, provider_options: dict[str, Any]) -> dict[str, Any]:
    """Training precision (``kscale.sweep.grid.TRAINING_AXES``) only for a family kscale trains:
    a published checkpoint cannot be retrained by an option, so the option would be silently
    ignored and rows would claim a precision nobody trained at. Returns the options without those
    at full precision (``TRAINING_DEFAULTS``): the same model keeps the same identity."""
    from kscale.models import FAMILIES
    from kscale.sweep.grid import TRAINING_AXES, TRAINING_DEFAULTS

    given = [a for a in TRAINING_AXES if a.rsplit(".", 1)[1] in provider_options]
    if not given or family_name not in FAMILIES:
        return provider_options  # an unknown family fails in resolve_models with did-you-mean
    provider = FAMILIES.get(family_name).provider
    if provider is None:
        trained = [n for n, f in FAMILIES.items() if f.provider]
        raise ConfigError(f"invalid override {given[0]}: training precision applies to families whose "
                          f"checkpoints kscale trains ({', '.join(trained) or 'none'}); "
                          f"model={family_name} loads published checkpoints")
    return {k: v for k, v in provider_options.items()
            if not (k in TRAINING_DEFAULTS and not isinstance(v, bool) and v == TRAINING_DEFAULTS[k])}


def _eval_plan(cfg: Any, ev: Mapping[str, Any]) -> EvalPlan:
    from kscale.evaluate import eval_specs_from_config, sequential_from_config

    if not isinstance(ev, Mapping):
        raise ConfigError("invalid eval config: choose one with eval=<name> (conf/eval/<name>.yaml)")
    name = str(ev.get("name") or _hydra_choice(cfg, "eval") or "custom")
    try:
        specs = eval_specs_from_config(ev)
        sequential_from_config(ev)  # eval.target_se & co. validated before any load
    except (KeyError, ValueError) as err:
        raise ConfigError(f"invalid override eval={name}: {err}") from None
    if not specs:
        raise ConfigError(f"invalid override eval={name}: it names no perplexity dataset and no "
                          "zero-shot task; every cell would measure nothing")
    if not ev.get("name"):
        name = _evaluated_name(name, ev, specs)
    # a custom or group eval without a batch size gets the largest that fits, as a user expects
    batch_size = ev.get("batch_size", "auto")
    if batch_size != "auto" and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                 or batch_size < 1):
        raise ConfigError(f"invalid override eval.batch_size={batch_size!r}: a positive integer "
                          "(sequences per forward pass) or auto (the largest that fits)")
    # unset sequential options leave the config (hence every cell's key) as it was before they existed
    config = {k: v for k, v in ev.items() if not (k in ("target_se", "target_acc_se") and v is None)}
    return EvalPlan(name=name, config=config, specs=tuple(specs),
                    source=str(ev.get("source") or "auto"), batch_size=batch_size)


def _evaluated_name(group: str, ev: Mapping[str, Any], specs: Sequence[Any]) -> str:
    """The eval's name as rows record it: the config group's name, unless ``eval.perplexity`` or
    ``eval.zeroshot`` was overridden away from the group's file, then what was evaluated
    (``piqa+winogrande``), so a row never claims ``wikitext2`` for a zero-shot-only run."""
    from omegaconf import OmegaConf

    file = Path(__file__).resolve().parents[1] / "conf" / "eval" / f"{group}.yaml"
    if file.is_file():
        base = OmegaConf.to_container(OmegaConf.load(file), resolve=True) or {}
        if all(list(base.get(k) or []) == list(ev.get(k) or []) for k in ("perplexity", "zeroshot")):
            return group
    return "+".join(s.key for s in specs)


def _tracking(c: Mapping[str, Any], name: str) -> TrackingSpec:
    w = dict(c.get("wandb") or {})
    mode = w.get("mode", "disabled")
    if mode is False or mode is None:
        mode = "disabled"
    if mode not in WANDB_MODES:
        raise ConfigError(f"invalid override wandb.mode={mode}: allowed {', '.join(WANDB_MODES)}")
    allowed = ("mode", "project", "entity", "dir", "tags")
    unknown = sorted(set(w) - set(allowed))
    if unknown:
        raise ConfigError(f"invalid wandb config: unknown keys {unknown}. Allowed: {', '.join(allowed)}")
    return TrackingSpec(mode=mode, project=w.get("project") or "kscale", entity=w.get("entity"),
                        dir=w.get("dir"), tags=tuple(w.get("tags") or ()))


def build_plan(cfg: Any) -> SweepPlan:
    """Validate ``cfg`` (a composed ``DictConfig`` or a plain mapping) and build the plan.

    Raises:
        ConfigError: naming the override, the value and the allowed values.
    """
    from kscale.paths import default_cache_dir, default_data_dir

    c = to_container(cfg)
    name = str(c.get("name") or "")
    if not _NAME_RE.match(name):
        raise ConfigError(f"invalid override name={name!r}: a study name is letters, digits, "
                          "'_', '-' and '.', starting with a letter or digit")
    results_dir = Path(str(c.get("results_dir") or "results")).expanduser()
    data_dir = Path(c["data_dir"]).expanduser() if c.get("data_dir") else default_data_dir()
    if not data_dir.is_dir():
        raise ConfigError(f"invalid override data_dir={data_dir}: not a directory "
                          "(default: $KSCALE_DATA_DIR or ../shared/data)")
    cache_dir = Path(c["cache_dir"]).expanduser() if c.get("cache_dir") else default_cache_dir()

    unknown = sorted(set(c) - set(SWEEP_KEYS) - {"choices"})
    if unknown:
        raise ConfigError(f"invalid override {unknown[0]}: not a sweep setting (a typo?)."
                          f"{did_you_mean(unknown[0], SWEEP_KEYS)} Settings: {', '.join(SWEEP_KEYS)}")
    for key in BOOL_SETTINGS:
        if key in c:
            check_bool(key, c[key])
    _check_axis_values(c)
    # None is a value of blocksize (one constant per row) and exponent_bits (the type's default)
    axes = {axis: c[axis] for axis in QUANT_AXES
            if axis in c and (c[axis] is not None or axis in ("blocksize", "exponent_bits"))}
    method_options = _check_method_options(c)
    try:
        cells = expand_cells(axes, method_options=method_options)
    except ValueError as err:
        raise ConfigError(f"invalid grid: {err}") from None

    # plan=true loads nothing, so a hub checkpoint need not be reachable to be priced
    models, provider_options = _model_plan(c.get("model"), check_hub=not c.get("plan"))
    ev = _eval_plan(cfg, c.get("eval"))
    _check_bound_eval(c["model"]["name"], ev, cells, method_options, data_dir)
    tracking = _tracking(c, name)
    config = dict(c)
    for group in ("model", "eval", "experiment"):
        choice = _hydra_choice(cfg, group)
        if choice:
            config.setdefault("choices", {})[group] = choice
    return SweepPlan(
        name=name, results_dir=results_dir, models=tuple(models), cells=tuple(cells), eval=ev,
        data_dir=data_dir, cache_dir=cache_dir, rerun=bool(c.get("rerun", False)),
        progress=bool(c.get("progress", True)), tracking=tracking, config=config,
        provider_options=provider_options,
    )
