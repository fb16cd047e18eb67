"""Where each architecture produces its keys and values, and how they are laid out there.

One registered :class:`KVSite` per Hugging Face ``model_type`` (``KV_SITES``): which modules'
outputs hold K and V, how to cut K and V out of them as [..., n_heads, head_dim], and the
cache's shape (layers, KV heads, head size) for :func:`kscale.quant.runtime.kv_bits_per_token`.

What is quantized, for every family: K and V as their projection writes them, before attention
uses them -- for rotary models (GPT-NeoX, Llama) that is K *before* RoPE is applied (the
pre-RoPE choice of KVQuant, Hooper et al. 2024, §3.2; llama.cpp's cache instead stores K after
RoPE). Rows record it as ``kv_site``. Layouts (transformers 4.x/5.x):

* GPT-2 (and the toy family): ``attn.c_attn`` (Conv1D) -> [q | k | v], each n_head x head_dim.
* OPT: ``self_attn.k_proj`` / ``v_proj``; Llama/Mistral/Qwen2: the same names, n_kv_heads (GQA).
* GPT-NeoX: ``attention.query_key_value`` -> per head [q | k | v] (view [..., heads, 3*hd]).
* BLOOM: ``self_attention.query_key_value`` -> per head [q, k, v] (view [..., heads, 3, hd]).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kscale.registry import Registry

__all__ = ["KVSite", "KV_SITES", "KV_SITE_NAME", "kv_site_for"]

#: the ``kv_site`` row value: what the KV quantizer sees
KV_SITE_NAME = "projection_output_pre_rope"

Rewrite = Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class KVSite:
    """How one architecture exposes K and V.

    Attributes:
        suffixes: ``{module name suffix: rewrite}``; ``rewrite(out, q)`` returns the module's
            output with its K/V parts replaced by ``q(part)`` (part: [..., heads, head_dim]).
        layout: ``config -> (n_layers, n_kv_heads, head_dim)``.
    """

    suffixes: Callable[[Any], dict[str, Rewrite]]
    layout: Callable[[Any], tuple[int, int, int]]


KV_SITES: Registry[KVSite] = Registry("KV site (model_type)")


def kv_site_for(config: Any) -> KVSite:
    """The site of a model's ``config.model_type``; unknown types raise with the supported list."""
    model_type = getattr(config, "model_type", None)
    if model_type not in KV_SITES:
        raise ValueError(f"kv_bits needs to know where {model_type!r} models produce K and V; "
                         f"supported model types: {', '.join(KV_SITES.names())}")
    return KV_SITES.get(model_type)


def _heads(config: Any, n_heads: str, hidden: str) -> tuple[int, int]:
    nh = int(getattr(config, n_heads))
    return nh, int(getattr(config, hidden)) // nh


def _fused_slices(n_heads: int, head_dim: int, width: int) -> Rewrite:
    """[q | k | v] along the last dim, each ``width`` values (GPT-2's c_attn)."""
    def rewrite(out, q):
        out = out.clone()
        for part in (1, 2):
            piece = out[..., part * width:(part + 1) * width]
            piece.copy_(q(piece.unflatten(-1, (n_heads, head_dim))).flatten(-2))
        return out
    return rewrite


def _split_kv(n_heads: int, head_dim: int) -> Rewrite:
    """A projection whose whole output is K (or V): OPT, Llama."""
    return lambda out, q: q(out.unflatten(-1, (n_heads, head_dim))).flatten(-2)


def _neox(n_heads: int, head_dim: int) -> Rewrite:
    def rewrite(out, q):
        out = out.clone()
        per_head = out.unflatten(-1, (n_heads, 3 * head_dim))
        for part in (1, 2):
            piece = per_head[..., part * head_dim:(part + 1) * head_dim]
            piece.copy_(q(piece))
        return out
    return rewrite


def _bloom(n_heads: int, head_dim: int) -> Rewrite:
    def rewrite(out, q):
        out = out.clone()
        per_head = out.unflatten(-1, (n_heads, 3, head_dim))
        for part in (1, 2):
            piece = per_head[..., part, :]
            piece.copy_(q(piece))
        return out
    return rewrite


def _gpt2_suffixes(c):
    nh, hd = _heads(c, "n_head", "n_embd")
    return {"attn.c_attn": _fused_slices(nh, hd, nh * hd)}


def _gpt2_layout(c):
    return (int(c.n_layer), *_heads(c, "n_head", "n_embd"))


def _opt_suffixes(c):
    rw = _split_kv(*_heads(c, "num_attention_heads", "hidden_size"))
    return {"self_attn.k_proj": rw, "self_attn.v_proj": rw}


def _opt_layout(c):
    return (int(c.num_hidden_layers), *_heads(c, "num_attention_heads", "hidden_size"))


def _llama_dims(c) -> tuple[int, int]:
    n_kv = int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return n_kv, int(head_dim)


def _llama_suffixes(c):
    rw = _split_kv(*_llama_dims(c))
    return {"self_attn.k_proj": rw, "self_attn.v_proj": rw}


def _llama_layout(c):
    return (int(c.num_hidden_layers), *_llama_dims(c))


def _neox_suffixes(c):
    return {"attention.query_key_value": _neox(*_heads(c, "num_attention_heads", "hidden_size"))}


def _bloom_suffixes(c):
    return {"self_attention.query_key_value": _bloom(*_heads(c, "n_head", "hidden_size"))}


def _bloom_layout(c):
    return (int(c.n_layer), *_heads(c, "n_head", "hidden_size"))


KV_SITES.register("gpt2", KVSite(_gpt2_suffixes, _gpt2_layout))
KV_SITES.register("opt", KVSite(_opt_suffixes, _opt_layout))
KV_SITES.register("gpt_neox", KVSite(_neox_suffixes, _opt_layout))
KV_SITES.register("bloom", KVSite(_bloom_suffixes, _bloom_layout))
for _name in ("llama", "mistral", "qwen2"):
    KV_SITES.register(_name, KVSite(_llama_suffixes, _llama_layout))
