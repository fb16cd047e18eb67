"""The estimate itself: one :class:`JobEstimate` per job, the sweep's :class:`PlanEstimate`
(totals, launcher suggestion, the printed table), and the ``plan=true`` entry points.

It combines devices, sizes and token counts into hours, memory and disk; it is the only part
that reads the result store (resume-aware cell counts) and, with ``plan_probe``, loads a model.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kscale.estimate.devices import GIB, DeviceProfile, device_profile, local_device_name
from kscale.estimate.sizes import (_method, calibration_tokens, forward_flops, head_params_for, n_params_for,
                                   vocab_size_for, weight_bytes_per_param)
from kscale.estimate.tokens import ZEROSHOT_SAMPLE_ITEMS, _cached_tokenizer, eval_tokens
from kscale.results import ResultStore, row_key
from kscale.sweep.job import cell_identity
from kscale.estimate.training import TrainingRun, training_runs, training_summary, variant_label


# ----------------------------------------------------------------------------- jobs

@dataclass(frozen=True)
class JobEstimate:
    """One job (family x size x revision) of the sweep; sizes in bytes, compute in FLOPs."""

    family: str
    size: str
    revision: str | None
    checkpoint: str
    n_params: int | None
    n_params_source: str
    cells: int
    finished: int
    tokens_per_cell: int
    tokens: Mapping[str, int]
    tokenizer: str
    tokens_exact: bool
    calib_tokens_per_cell: int
    passes: int
    eval_flops: float | None
    calib_flops: float | None
    hours: float | None
    weights_dtype: str
    weights_gb: float | None
    snapshot_gb: float | None
    reference_gb: float | None
    activations_gb: float | None
    mem_gb: float | None
    devices_needed: int | None
    needs_device_map: bool
    disk_bytes: int
    notes: tuple[str, ...] = ()
    #: device-hours with sequential evaluation (quantized cells at SEQUENTIAL_STOP_FRACTION of their tokens)
    hours_sequential: float | None = None
    #: the build of a provider-trained model apart from the family's default (``w4,kv8``; "" = default)
    variant: str = ""

    @property
    def to_run(self) -> int:
        return self.cells - self.finished

    @property
    def flops(self) -> float | None:
        if self.eval_flops is None:
            return None
        return self.eval_flops + (self.calib_flops or 0.0)

    @property
    def name(self) -> str:
        return (f"{self.family}-{self.size}" + (f"@{self.revision}" if self.revision else "")
                + (f"[{self.variant}]" if self.variant else ""))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(to_run=self.to_run, flops=self.flops, name=self.name)
        d["notes"] = list(self.notes)
        d["tokens"] = dict(self.tokens)
        return d


#: Bytes of one result row on disk (JSON line): measured ~1.8 kB for a toy row with one
#: perplexity dataset; every further dataset/task adds its metrics and protocol string.
ROW_BYTES_BASE = 1500
ROW_BYTES_PER_EVAL = 350
#: Expected share of its tokens a quantized cell evaluates under ``eval.target_se`` (the study_cost.py
#: target: the toy studies' answers unchanged at <= 1/5 of the evaluated tokens); the reference is full.
SEQUENTIAL_STOP_FRACTION = 0.2
#: The GPU profile a CPU plan names when a job does not fit one host's RAM.
GPU_FOR_CPU_PLANS = "a100"


def _finished(plan: Any, spec: Any, done: set[str]) -> int:
    if plan.rerun:
        return 0
    return sum(row_key(cell_identity(plan, spec, c)) in done for c in plan.cells)


def _batch_rows(plan: Any, seqlen: int) -> int:
    """Rows per forward pass: the eval's ``batch_size``; ``auto`` counted as the CPU rule
    (2048 tokens per pass; on a GPU auto fills what is left, which the memory column cannot know)."""
    # on use: kscale.estimate imports without torch
    from kscale.evaluate.batching import CPU_TOKENS_PER_BATCH

    size = plan.eval.batch_size
    return max(1, CPU_TOKENS_PER_BATCH // max(1, seqlen)) if size == "auto" else int(size)


def estimate_job(plan: Any, spec: Any, device: DeviceProfile, *, rate: float | None = None,
                 done: set[str] | None = None) -> JobEstimate:
    """The cost of running ``plan``'s cells on ``spec`` (only the unfinished ones count)."""
    # on use: kscale.estimate imports without torch
    from kscale.models import get_family

    family = get_family(spec.family)
    notes: list[str] = []
    if done is None:
        done = ResultStore(plan.study_dir).finished_keys()
    finished = _finished(plan, spec, done)
    todo_cells = [c for c in plan.cells]
    if finished:
        todo_cells = [c for c in plan.cells if row_key(cell_identity(plan, spec, c)) not in done]
    n_params, n_source = n_params_for(plan, spec)
    toks = eval_tokens(plan, spec)
    if not toks.exact:
        notes.append(f"tokens counted with {toks.tokenizer}: approximate")
    if toks.missing:
        notes.append(f"not available locally, not counted: {', '.join(toks.missing)}")
    if toks.sampled:

        notes.append(f"zero-shot tokens of {', '.join(toks.sampled)} scaled up from a seeded "
                     f"{ZEROSHOT_SAMPLE_ITEMS}-item sample by characters (~1 %)")
    calib = [calibration_tokens(c, family.seqlen) for c in todo_cells]
    calib_per_cell = max(calib) if calib else 0
    # forward passes: the 16-bit reference (= the baseline's evaluation) once, if anything runs,
    # then one evaluation per quantized cell
    n_quant = sum(not c.is_baseline for c in todo_cells)
    eval_passes = (1 + n_quant) if todo_cells else 0
    calib_passes = 0.0
    for c, t in zip(todo_cells, calib):
        if t:
            factor = getattr(_method(c.method), "calibration_passes", None)
            if factor is None:
                notes.append(f"method {c.method}: calibration cost unknown, counted as one forward pass")
                factor = 1.0
            calib_passes += factor * t
    bpp, dtype_label = weight_bytes_per_param(plan, spec, device)
    tok, _, tok_exact = _cached_tokenizer(plan, spec)
    vocab = vocab_size_for(plan, spec, tok if tok_exact else None)
    if n_params is None:
        notes.append(n_source)
        eval_flops = calib_flops = hours = hours_seq = None
        weights = snapshot = None
    else:
        eval_flops = forward_flops(n_params, toks.total, scored=toks.total_scored,
                                   head_params=head_params_for(plan, spec)) * eval_passes
        calib_flops = forward_flops(n_params, calib_passes)
        r = rate if rate is not None else device.rate("float32" if bpp == 4 else "float16")
        hours = (eval_flops + calib_flops) / r / 3600.0
        # sequential: the reference pass full, every quantized cell stopping at the expected fraction
        seq_passes = (1 + n_quant * SEQUENTIAL_STOP_FRACTION) if todo_cells else 0.0
        hours_seq = hours * (eval_flops / max(eval_passes, 1) * seq_passes + calib_flops) / max(
            eval_flops + calib_flops, 1.0)
        weights = n_params * bpp / GIB
        # WeightSnapshot keeps the quantized linears' 16-bit weights on the model's device:
        # bounded by the weights (embeddings are not copied); counted at the bound
        snapshot = weights if n_quant else 0.0
    reference = activations = None
    # on use: kscale.estimate imports without torch
    from kscale.evaluate.reference import bytes_per_token
    from kscale.evaluate.specs import PerplexitySpec

    ppl_specs = [s for s in plan.eval.specs if isinstance(s, PerplexitySpec)]
    # the reference pass keeps per scored token its NLL, argmax and (kl) top-k log-probs, in host memory
    reference = sum(toks.scored.get(s.key, 0) * bytes_per_token(s.kl_top_k if s.kl else 0) for s in ppl_specs) / GIB
    if vocab is not None:
        seqlen = max([s.seqlen or family.seqlen for s in ppl_specs] or [family.seqlen])
        # one forward's logits in the model dtype plus the float32 copy of one window
        activations = (_batch_rows(plan, seqlen) * seqlen * vocab * bpp + seqlen * vocab * 4) / GIB
    else:
        notes.append("vocab size unknown (no local tokenizer or config.json): reference log-probs "
                     "and logits not counted")
    mem = None
    if weights is not None:
        mem = weights + (snapshot or 0.0) + (reference or 0.0) + (activations or 0.0)
    devices_needed = None
    needs_map = False
    if mem is not None and device.mem_gb > 0:
        usable = 0.9 * device.mem_gb
        devices_needed = max(1, math.ceil(mem / usable))
        needs_map = devices_needed > 1
        if needs_map and device.kind == "cpu":
            # one host's RAM: nothing to shard over; say what a GPU profile would need instead
            gpu = device_profile(GPU_FOR_CPU_PLANS)
            n_gpu = max(1, math.ceil(mem / (0.9 * gpu.mem_gb)))
            notes.append(f"needs ~{mem:.0f} GiB > {usable:.0f} GiB of this host's RAM: does not fit a CPU run; "
                         f"on GPUs (plan_device={gpu.name}) it needs {n_gpu} x {gpu.name}"
                         + (" with model.device_map=auto" if n_gpu > 1 else ""))
            needs_map, devices_needed = False, 1
        elif needs_map and not spec.device_map:
            notes.append(f"needs ~{mem:.0f} GiB > {usable:.0f} GiB usable on one {device.name}: "
                         f"set model.device_map=auto over {devices_needed} devices")
    disk = len(todo_cells) * (ROW_BYTES_BASE + ROW_BYTES_PER_EVAL * len(plan.eval.specs))
    if "assumed" in dtype_label:
        notes.append("model.dtype=checkpoint with no local config: weights assumed 16-bit")
    return JobEstimate(
        family=spec.family, size=spec.size, revision=getattr(spec, "revision", None),
        checkpoint=spec.checkpoint, n_params=n_params, n_params_source=n_source,
        cells=len(plan.cells), finished=finished, tokens_per_cell=toks.total, tokens=dict(toks.per_task),
        tokenizer=toks.tokenizer, tokens_exact=toks.exact, calib_tokens_per_cell=calib_per_cell,
        passes=eval_passes, eval_flops=eval_flops, calib_flops=calib_flops, hours=hours, weights_dtype=dtype_label, weights_gb=weights,
        snapshot_gb=snapshot, reference_gb=reference, activations_gb=activations, mem_gb=mem,
        devices_needed=devices_needed, needs_device_map=needs_map, disk_bytes=disk, notes=tuple(notes),
        hours_sequential=hours_seq,
    )


# ----------------------------------------------------------------------------- the whole sweep

@dataclass(frozen=True)
class PlanEstimate:
    """Every job of a sweep plus totals and a launcher suggestion."""

    jobs: tuple[JobEstimate, ...]
    device: DeviceProfile
    rate_source: str
    studies: tuple[str, ...]
    probe: Mapping[str, Any] | None = None
    #: provider-built rungs the plan trains (or finds cached): kscale.estimate.training
    training: tuple[TrainingRun, ...] = ()

    @property
    def totals(self) -> dict[str, Any]:
        jobs = self.jobs
        known = [j for j in jobs if j.flops is not None]
        pending = [j for j in jobs if j.to_run]
        hours = [j.hours for j in pending if j.hours is not None]
        return {
            "jobs": len(jobs),
            "jobs_to_run": len(pending),
            "cells": sum(j.cells for j in jobs),
            "finished": sum(j.finished for j in jobs),
            "to_run": sum(j.to_run for j in jobs),
            "tokens": sum(j.tokens_per_cell * j.to_run for j in jobs),
            "calib_tokens": sum(j.calib_tokens_per_cell * j.to_run for j in jobs),
            "flops": sum(j.flops for j in known),
            "hours": sum(hours),
            "hours_sequential": sum(j.hours_sequential for j in pending if j.hours_sequential is not None),
            "sequential_stop_fraction": SEQUENTIAL_STOP_FRACTION,
            # a job sharded with device_map=auto holds all its devices for its whole run
            "allocated_device_hours": sum(j.hours * (j.devices_needed or 1) for j in pending if j.hours is not None),
            "max_job_hours": max(hours) if hours else 0.0,
            "unknown_cost_jobs": [j.name for j in jobs if j.flops is None and j.to_run],
            "disk_bytes": sum(j.disk_bytes for j in jobs),
            "device_map_jobs": [j.name for j in pending if j.needs_device_map],
            "training_runs": sum(not r.cached for r in self.training),
            "training_flops": sum(r.flops for r in self.training if not r.cached),
            "training_hours": sum(r.seconds or 0.0 for r in self.training if not r.cached) / 3600,
        }

    @property
    def launcher(self) -> dict[str, Any]:
        """Launcher settings that spread the pending jobs: one array task per job."""
        t = self.totals
        n = t["jobs_to_run"]
        gpus = max([j.devices_needed or 1 for j in self.jobs if j.to_run] or [1]) if self.device.kind == "gpu" else 0
        timeout_min = max(10, math.ceil(t["max_job_hours"] * 60 * 1.5))
        return {
            "jobs": n,
            "array_parallelism": n,
            "max_gpus_per_job": gpus,
            "timeout_min": timeout_min,
            "command": (f"hydra/launcher=submitit_slurm hydra.launcher.array_parallelism={n} "
                        f"hydra.launcher.timeout_min={timeout_min}"
                        + (f" hydra.launcher.gpus_per_node={gpus}" if gpus > 1 else "")),
            "local": "hydra/launcher=joblib hydra.launcher.n_jobs=<workers>",
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "studies": list(self.studies),
            "device": asdict(self.device),
            "rate_source": self.rate_source,
            "probe": dict(self.probe) if self.probe else None,
            "flop_model": "2 * n_params * tokens per forward (attention scores not counted)",
            "jobs": [j.to_dict() for j in self.jobs],
            "totals": self.totals,
            "launcher": self.launcher,
            "training": [r.to_dict() for r in self.training],
        }

    def table(self) -> str:
        """The plain-text table ``plan=true`` prints."""
        head = ("job", "params", "cells", "done", "to run", "tok/cell", "calib/cell", "PFLOP", "hours",
                "mem GiB", "dev")
        rows = []
        for j in self.jobs:
            rows.append((
                j.name, _si(j.n_params), str(j.cells), str(j.finished), str(j.to_run),
                _si(j.tokens_per_cell) + ("" if j.tokens_exact else "~"), _si(j.calib_tokens_per_cell),
                "?" if j.flops is None else f"{j.flops / 1e15:.3g}",
                "?" if j.hours is None else f"{j.hours:.3g}",
                "?" if j.mem_gb is None else f"{j.mem_gb:.3g}",
                "?" if j.devices_needed is None else (f"{j.devices_needed}*" if j.needs_device_map else "1"),
            ))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        line = lambda cols: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cols, widths)))
        out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
        t = self.totals
        rate = (f"{self.device.name} profile ({self.device.tflops16:g}/{self.device.tflops32:g} sustained "
                f"TFLOP/s for 16/32-bit weights)" if self.rate_source == "profile"
                else f"probe on this machine ({self.probe.get('tflops', 0):.3g} TFLOP/s measured)")
        out += [
            "",
            f"total: {t['jobs']} jobs ({t['jobs_to_run']} to run), {t['cells']} cells, {t['finished']} "
            f"finished, {t['to_run']} to run; {_si(t['tokens'])} eval tokens + {_si(t['calib_tokens'])} "
            f"calibration tokens; {t['flops'] / 1e18:.3g} EFLOP; {t['hours']:.4g} device-hours of compute, "
            f"{t['allocated_device_hours']:.4g} allocated (sharded jobs hold every device; longest job "
            f"{t['max_job_hours']:.3g} h) at {rate}; rows ~{t['disk_bytes'] / 1e6:.3g} MB",
            f"sequential (eval.target_se): ~{t['hours_sequential']:.4g} device-hours, assuming each quantized "
            f"cell stops after {t['sequential_stop_fraction']:.0%} of its tokens (the 16-bit reference pass is "
            f"always full; benchmarks/study_cost.py measures the fraction on the toy studies)",
        ]
        if self.training:
            out.append(training_summary(list(self.training)))
        if t["unknown_cost_jobs"]:
            out.append(f"unknown cost (no n_params): {', '.join(t['unknown_cost_jobs'])}")
        if t["device_map_jobs"]:
            out.append(f"more than one {self.device.name} (model.device_map=auto): "
                       f"{', '.join(t['device_map_jobs'])}")
        la = self.launcher
        out.append(f"spread it: {la['command']}   (or locally: {la['local']})")
        by_note: dict[str, list[str]] = {}
        for j in self.jobs:
            for n in j.notes:
                by_note.setdefault(n, []).append(j.name)
        if by_note:
            out.append("notes:")
            out += [f"  {', '.join(names)}: {n}" for n, names in sorted(by_note.items(), key=lambda kv: kv[1][0])]
        out.append("(~ = tokens counted with a stand-in tokenizer; FLOPs = 2 * n_params per token read, the LM "
                   "head only at scored tokens where its size is known; attention scores and padding not "
                   "counted; * = needs device_map=auto)")
        return "\n".join(out)


def _si(n: float | int | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def plan_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``plan*`` keys of a config (defaults when absent): plan, plan_out, plan_device, ..."""
    get = cfg.get
    return {
        "plan": bool(get("plan", False)),
        "plan_out": get("plan_out", None),
        "plan_device": get("plan_device", None),
        "plan_probe": bool(get("plan_probe", False)),
        "plan_devices": dict(get("plan_devices", None) or {}),
    }



def estimate_plans(plans: Sequence[Any], *, device: str | None = None,
                   devices: Mapping[str, Mapping[str, Any]] | None = None, probe: bool = False,
                   models: Iterable[tuple[Any, Any]] | None = None) -> PlanEstimate:
    """Estimate every job of ``plans`` (one ``SweepPlan`` per composed sweep combination).

    Args:
        plans: the validated plans (``kscale.config.build_plan``), nothing loaded.
        device: a :data:`DEVICES` name (or one defined in ``devices``); None = the profile of
            the device the first model would run on (:func:`local_device_name`).
        devices: config ``plan_devices`` overrides ``{name: {tflops16, tflops32, mem_gb}}``.
        probe: time one window of the smallest model on this machine and use that rate.
        models: ``(plan, model_spec)`` pairs to estimate instead of every plan's models.
    """
    pairs = list(models) if models is not None else [(p, s) for p in plans for s in p.models]
    if device is None:
        device = local_device_name(pairs[0][1].device) if pairs else "cpu"
    prof = device_profile(device, devices)
    seen: set[tuple] = set()
    unique = []
    for plan, spec in pairs:  # the same job composed twice (a sweep over a key the job ignores)
        key = (str(plan.study_dir), plan.eval.config_json, spec)
        if key not in seen:
            seen.add(key)
            unique.append((plan, spec))
    probe_info = None
    rate = None
    if probe and unique:
        probe_info = probe_rate(unique)
        rate = probe_info["tflops"] * 1e12
    done_by_study: dict[str, set[str]] = {}
    jobs = []
    for plan, spec in unique:
        study = str(plan.study_dir)
        if study not in done_by_study:
            done_by_study[study] = ResultStore(plan.study_dir).finished_keys()
        job = estimate_job(plan, spec, prof, rate=rate, done=done_by_study[study])
        jobs.append(replace(job, variant=variant_label(plan, spec)))
    return PlanEstimate(tuple(jobs), prof, "probe" if probe_info else "profile",
                        tuple(dict.fromkeys(str(p.study_dir) for p in plans)), probe_info,
                        tuple(training_runs(unique, prof)))


def probe_rate(pairs: Sequence[tuple[Any, Any]], *, repeats: int = 3) -> dict[str, Any]:
    """Time one evaluation window of the smallest model on its configured device.

    The achieved rate (2 * n_params * tokens / seconds, the same FLOP model as the estimate) then
    prices every job, so the hours include this machine's real efficiency. Loads that one model.
    """
    # on use: kscale.estimate imports without torch
    import torch

    from kscale.evaluate.specs import PerplexitySpec
    from kscale.models import get_family, load_model, prepare_models

    sized = [(n_params_for(p, s)[0], i) for i, (p, s) in enumerate(pairs)]
    known = [(n, i) for n, i in sized if n is not None] or [(0, 0)]
    plan, spec = pairs[min(known)[1]]
    (spec,) = prepare_models([spec], plan.provider_options)
    loaded = load_model(spec)
    family = get_family(spec.family)
    ppl = [s for s in plan.eval.specs if isinstance(s, PerplexitySpec)]
    seqlen = (ppl[0].seqlen if ppl and ppl[0].seqlen else family.seqlen)
    # on use: kscale.estimate imports without torch
    from kscale.models.loading import model_context

    ctx = model_context(loaded.model)
    seqlen = min(seqlen, ctx) if ctx else seqlen
    vocab = int(getattr(loaded.model.config, "vocab_size", 100) or 100)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (_batch_rows(plan, seqlen), seqlen), generator=g).to(spec.device)
    times = []
    with torch.inference_mode():
        loaded.model(input_ids=ids)  # warm-up (kernels, allocator)
        for _ in range(repeats):
            if str(spec.device).startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loaded.model(input_ids=ids)
            if str(spec.device).startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    flops = 2.0 * loaded.n_params * ids.numel()
    return {"model": f"{spec.family}-{spec.size}", "device": str(spec.device), "tokens": int(ids.numel()),
            "seconds": seconds, "n_params": loaded.n_params, "tflops": flops / seconds / 1e12}


def write_plan(estimate: PlanEstimate, path: str | os.PathLike) -> Path:
    """Write ``estimate.to_dict()`` as JSON to ``path`` (the one file ``plan_out`` asks for)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(estimate.to_dict(), indent=2, default=str) + "\n")
    return path


def report_plan(plans: Sequence[Any], settings: Mapping[str, Any],
                models: Iterable[tuple[Any, Any]] | None = None) -> tuple[PlanEstimate, str]:
    """Estimate and render: ``(estimate, text)``; writes ``plan_out`` (JSON) if set.

    The caller (``run_sweep.py``, the sweeper) prints the text: this module only logs.
    """
    est = estimate_plans(plans, device=settings["plan_device"], devices=settings.get("plan_devices"),
                         probe=settings.get("plan_probe", False), models=models)
    text = est.table()
    if settings.get("plan_out"):
        out = write_plan(est, settings["plan_out"])
        text += f"\nplan written to {out}"
    return est, text

