"""Activation and KV-cache precision (issue 20 §1): run-time quantizers applied through hooks.

>>> from kscale.quant.runtime import RuntimePrecision, RuntimeQuantSpec, runtime_quantization
>>> p = RuntimePrecision(act=RuntimeQuantSpec(8, "token"), kv=RuntimeQuantSpec(4, "head", kind="kv"))
>>> p.label
'aint8-token-kvint4-head'

``spec.py``: what a quantizer is and how it rounds (groups never span two tokens);
``sites.py``: where each architecture produces K and V; ``hooks.py``: the context manager and
the KV cache's bits per token of context.
"""
from __future__ import annotations

from kscale.quant.runtime.hooks import RuntimePrecision, kv_bits_per_token, runtime_quantization
from kscale.quant.runtime.sites import KV_SITE_NAME, KV_SITES, KVSite, kv_site_for
from kscale.quant.runtime.spec import OFF_BITS, RuntimeQuantSpec, parse_granularity

__all__ = ["KV_SITES", "KV_SITE_NAME", "KVSite", "OFF_BITS", "RuntimePrecision", "RuntimeQuantSpec",
           "kv_bits_per_token", "kv_site_for", "parse_granularity", "runtime_quantization"]
