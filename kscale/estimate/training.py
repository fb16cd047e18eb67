"""What a plan must train before it can evaluate: provider-built checkpoints not yet cached.

A family whose checkpoints kscale trains itself (the toy ladder; issue 20's training-precision
variants, each its own cached ladder) pays for training on the first job that needs a rung, and a
plan that left it out would price a 25-minute experiment at seconds. One training run serves every
checkpoint over training of its rung (the snapshots are saved on the way), so runs are counted
once per (build options, size), however many revisions the sweep evaluates.

FLOPs = 6 · N · D (forward + backward, Kaplan et al. 2020 §2.1), D the rung's final token budget.
Hours come, in order of trust, from this machine's own measured throughput (``train_stats.json``
of any cached rung of the same size: what ``kscale.toy`` wrote when it trained it; rungs this
small run far below a GEMM's rate, ~1 GFLOP/s against the ``cpu`` profile's 100, so the profile
alone would be 100x too optimistic), else the device profile's 32-bit rate. Quantized training
adds its fake-quantization per step, which the measured full-precision rate does not include:
the plan says so.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kscale.estimate.devices import DeviceProfile
from kscale.estimate.sizes import n_params_for
from kscale.paths import default_cache_dir
from kscale.registry import Registry

log = logging.getLogger(__name__)

#: Training FLOPs per parameter per token (forward 2 + backward 4).
TRAIN_FLOPS_PER_PARAM_TOKEN = 6


@dataclass(frozen=True)
class TrainingRun:
    """One rung of one build that a plan trains (or finds cached).

    Attributes:
        family, size: the rung.
        variant: the build options that name it apart from the family's default (``w4,kv8``; ``""``).
        n_params, tokens: N and the final token budget D.
        cached: the checkpoint exists: nothing to train.
        seconds: estimated training time (None when cached or unknown).
        rate_source: ``measured (<where>)`` or ``profile <name>``.
    """

    family: str
    size: str
    variant: str
    n_params: int
    tokens: int
    cached: bool
    seconds: float | None
    rate_source: str

    @property
    def flops(self) -> float:
        return float(TRAIN_FLOPS_PER_PARAM_TOKEN) * self.n_params * self.tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops": self.flops}


def _toy_run(plan: Any, spec: Any, device: DeviceProfile) -> TrainingRun:
    # on use: kscale.estimate imports without torch
    from kscale.models import PROVIDERS
    from kscale.toy.ladder import ToyOptions, planned_tokens

    opts = ToyOptions.from_mapping(plan.provider_options)
    final = PROVIDERS.get("toy").locate(spec.size, plan.provider_options)
    tokens = planned_tokens(spec.size, opts)
    n, _ = n_params_for(plan, spec)
    flops = float(TRAIN_FLOPS_PER_PARAM_TOKEN) * (n or 0) * tokens
    cached = (final / "train_stats.json").is_file()
    seconds, source = None, f"profile {device.name}"
    if not cached:
        measured = _measured_rate(default_cache_dir() / "toy", spec.size)
        if measured is not None:
            rate, where = measured
            seconds, source = flops / rate, f"measured ({where})"
        else:
            seconds = flops / device.rate("float32")
    return TrainingRun(spec.family, spec.size, variant_label(plan, spec), int(n or 0), int(tokens), cached,
                       seconds, source)


def variant_label(plan: Any, spec: Any) -> str:
    """``w4,kv8`` (``qat_from0.5`` appended): the training precision of a provider-built model
    apart from full precision; "" for the default build or a family kscale does not train."""
    # on use: kscale.estimate imports without torch
    from kscale.models import PROVIDERS, get_family

    provider = get_family(spec.family).provider
    columns = getattr(PROVIDERS.get(provider), "row_columns", None) if provider else None
    if columns is None:
        return ""
    row = columns(plan.provider_options)
    parts = [f"{k.removeprefix('train_bits_')}{v}" for k, v in row.items()
             if k.startswith("train_bits_") and v != 16]
    if row.get("qat_from"):
        parts.append(f"qat_from{row['qat_from']:g}")
    return ",".join(parts)


def _measured_rate(root: Path, size: str) -> tuple[float, str] | None:
    """6·N·D / train_s of the cached rungs of ``size`` (the fastest: a run slowed by a busy machine
    says less about the next one than an undisturbed one); None when none is cached."""
    best = None
    for stats in sorted(root.glob(f"*/{size}/train_stats.json")):
        try:
            d = json.loads(stats.read_text())
            rate = TRAIN_FLOPS_PER_PARAM_TOKEN * d["n_params"] * d["n_tokens"] / d["train_s"]
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            continue  # a file being written, or damaged: another rung may answer
        if best is None or rate > best[0]:
            best = (rate, f"{size} trained here at {rate / 1e9:.2f} GFLOP/s")
    return best


#: provider name -> (plan, spec, device) -> TrainingRun, for families whose checkpoints kscale builds.
TRAINING_COSTS: Registry[Any] = Registry("training cost")
TRAINING_COSTS.register("toy", _toy_run)


def training_runs(pairs: Iterable[tuple[Any, Any]], device: DeviceProfile) -> list[TrainingRun]:
    """One :class:`TrainingRun` per distinct (build options, size) among the plan's models."""
    # on use: kscale.estimate imports without torch
    from kscale.models import get_family

    runs: dict[tuple, TrainingRun] = {}
    for plan, spec in pairs:
        provider = get_family(spec.family).provider
        if not provider or provider not in TRAINING_COSTS:
            continue
        key = (spec.family, spec.size, json.dumps(dict(plan.provider_options), sort_keys=True, default=str))
        if key not in runs:
            try:
                runs[key] = TRAINING_COSTS.get(provider)(plan, spec, device)
            except Exception as err:  # noqa: BLE001 - an estimate: say why and go on
                log.warning("%s-%s: cannot price its training: %s", spec.family, spec.size, err)
    return list(runs.values())


def training_summary(runs: list[TrainingRun]) -> str:
    """One line for the plan's table (empty when nothing is trained by kscale)."""
    if not runs:
        return ""
    todo = [r for r in runs if not r.cached]
    variants = sorted({r.variant or "full precision" for r in todo})
    flops = sum(r.flops for r in todo)
    seconds = sum(r.seconds or 0.0 for r in todo)
    sources = sorted({r.rate_source.split(" (")[0] for r in todo})
    text = (f"training: {len(todo)} of {len(runs)} runs to train ({len(runs) - len(todo)} cached; one run "
            f"per build x rung serves all its checkpoints), {sum(r.tokens for r in todo) / 1e6:.3g}M tokens, "
            f"{flops:.3g} FLOP (6·N·D), ~{seconds / 60:.1f} min of one core-thread at {'/'.join(sources) or '-'} rate")
    if any(r.variant for r in todo):
        text += (f"; {len(variants)} builds ({', '.join(variants[:6])}{' ...' if len(variants) > 6 else ''}); "
                 "quantized training's fake-quantization overhead per step is not included")
    return text

