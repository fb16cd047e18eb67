"""Fake-quantize activations and the KV cache during a forward pass, through removable hooks.

Why hooks: the weights of a cell are quantized in place and restored from a snapshot; what a
layer *reads* at run time cannot be stored, so it is rounded as it flows. ``act`` rounds the
input of every quantized linear (a forward pre-hook on each module the family's
``ModuleFilter`` selects, the same set whose weights are quantized); ``kv`` rounds K and V
where the architecture produces them (:mod:`kscale.quant.runtime.sites`). The hooks live only
inside :func:`runtime_quantization`, so the model is exactly as before once it exits.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kscale.quant.filter import ModuleFilter
from kscale.quant.modules import quantizable_modules
from kscale.quant.runtime.sites import KV_SITE_NAME, kv_site_for
from kscale.quant.runtime.spec import RuntimeQuantSpec

__all__ = ["RuntimePrecision", "kv_bits_per_token", "runtime_quantization"]


@dataclass(frozen=True)
class RuntimePrecision:
    """The activation and KV-cache quantizers of a cell (either may be off: bits 16)."""

    act: RuntimeQuantSpec = RuntimeQuantSpec(kind="act")
    kv: RuntimeQuantSpec = RuntimeQuantSpec(kind="kv", granularity="head")

    def __post_init__(self) -> None:
        if self.act.kind != "act" or self.kv.kind != "kv":
            raise ValueError("RuntimePrecision(act=<kind act spec>, kv=<kind kv spec>)")

    @property
    def is_off(self) -> bool:
        return self.act.is_off and self.kv.is_off

    def to_row(self) -> dict[str, Any]:
        row = {**self.act.to_row(), **self.kv.to_row()}
        row["kv_site"] = None if self.kv.is_off else KV_SITE_NAME
        return row

    @property
    def label(self) -> str:
        return f"a{self.act.label()}-kv{self.kv.label()}"


def kv_bits_per_token(config: Any, kv: RuntimeQuantSpec) -> int:
    """Bits the KV cache holds per token of context: K and V of every layer and KV head,
    ``2 x n_layers x n_kv_heads x head_dim x bits`` plus the constants of their groups
    (``2 x n_layers x groups x scale_bits``); 16 bits per value when ``kv`` is off."""
    n_layers, n_kv_heads, head_dim = kv_site_for(config).layout(config)
    return 2 * n_layers * kv.bits_per_token(n_kv_heads, head_dim)


def _act_hook(spec: RuntimeQuantSpec):
    def pre_hook(module, args, kwargs):
        if not args:
            return None
        x = spec.apply(args[0].unsqueeze(-2)).squeeze(-2)
        return (x, *args[1:]), kwargs
    return pre_hook


def _kv_hook(rewrite, spec: RuntimeQuantSpec):
    def hook(module, args, output):
        return rewrite(output, spec.apply)
    return hook


@contextlib.contextmanager
def runtime_quantization(model: Any, precision: RuntimePrecision | None, *,
                         module_filter: Any = None) -> Iterator[None]:
    """Inside the block, ``model``'s forward passes round activations and K/V per ``precision``.

    Args:
        model: a Hugging Face causal LM (``config.model_type`` picks the KV site).
        precision: ``None`` or all-off installs nothing (the weights-only forward, bit for bit).
        module_filter: which linears get their inputs rounded (default: kscale's default filter,
            which leaves the LM head out, as for weights).

    Raises:
        ValueError: kv on for a model type with no registered site (before any hook exists).
    """
    handles = []
    try:
        if precision is not None and not precision.act.is_off:
            for module in quantizable_modules(model, module_filter or ModuleFilter()).values():
                handles.append(module.register_forward_pre_hook(_act_hook(precision.act), with_kwargs=True))
        if precision is not None and not precision.kv.is_off:
            rewrites = kv_site_for(model.config).suffixes(model.config)
            n_before = len(handles)
            for name, module in model.named_modules():
                for suffix, rewrite in rewrites.items():
                    if name == suffix or name.endswith("." + suffix):
                        handles.append(module.register_forward_hook(_kv_hook(rewrite, precision.kv)))
            if len(handles) == n_before:
                raise ValueError(f"kv_bits: no module named *.{', *.'.join(rewrites)} in the model")
        yield
    finally:
        for handle in handles:
            handle.remove()
