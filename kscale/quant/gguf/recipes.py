"""llama.cpp's file types (Q4_K_M, Q3_K_L, ...): which GGUF type each tensor of a model gets.

Source: llama.cpp ``src/llama-quant.cpp`` -- ``llama_ftype_get_default_type`` (the file type's
base type), ``llama_tensor_get_type_impl`` (the per-role, per-layer rules), ``tensor_type_fallback``
(row lengths a type cannot block), ``tensor_allows_quantization`` (what stays unquantized) and
``init_quantize_state_counters`` (tied embeddings); read at commit 007dbbf, rewritten here as a
table. Tensors are visited in layer order (``weight_name_comparer``), so the per-role counters
``i_attention_wv`` / ``i_ffn_down`` equal the layer index for models with one such tensor a layer.

Rules for the file types kscale offers (``n`` = layers, ``i`` = layer index,
``more(i) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2`` in integer division: ``use_more_bits``):

=========  =======  ==================================================================
file type  base     raised tensors
=========  =======  ==================================================================
q2_k_s     q2_k     ffn_down i < n/8: q4_k; attn_v q4_k if n_gqa >= 4
q3_k_s     q3_k     --
q3_k_m     q3_k     attn_v i < 2: q5_k, else q4_k; attn_output q4_k; ffn_down i < n/16: q5_k, else q4_k
q3_k_l     q3_k     attn_v, attn_output, ffn_down: q5_k
q4_k_s     q4_k     attn_v and ffn_down i < 4 resp. i < n/8: q5_k
q4_k_m     q4_k     attn_v and ffn_down where more(i): q6_k
q5_k_s     q5_k     --
q5_k_m     q5_k     attn_v and ffn_down where more(i): q6_k
q6_k       q6_k     --
q8_0       q8_0     --
=========  =======  ==================================================================

* ``attn_v`` includes fused ``attn_qkv`` (gpt2, gpt_neox, bloom): llama.cpp tests the attn_v
  category first, so its rules win over the later ``attn_qkv`` branch.
* Output head, and the token embedding when the GGUF file has no ``output.weight`` (tied): q6_k
  (q8_0 stays q8_0), or q8_0 if the row length is not a multiple of the base type's block.
* A 70B-class llama (``is_70b``) raises attn_v from q3_k/q4_k to q5_k.
* Fallback when the row length (``ne[0]``, the input width) is not a multiple of the type's
  block: q2_k/q3_k -> q4_0, iq4_xs -> iq4_nl, q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0; if that still does not
  divide (or for q8_0, where llama.cpp has no fallback and refuses), F16.
* Not quantized (kept at 16 bits): 1-D tensors (norms, biases) and position embeddings.
* ``q2_k_s`` wants an importance matrix for its q2_k tensors (``tensor_requires_imatrix``).

Not modelled: MoE/8-expert, Falcon, the IQ file types, user overrides (``--tensor-type``).
Hugging Face module names of gpt2, opt, gpt_neox (pythia), bloom, llama (and the toy family,
built from these architectures) map to roles with :func:`hf_tensor_role`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from kscale.quant.gguf.types import GGUF_TYPES
from kscale.quant.modules import QUANTIZABLE_TYPES, weight_matrix
from kscale.registry import did_you_mean

__all__ = ["FILE_TYPES", "ROLES", "UNQUANTIZED", "TensorAssignment", "gguf_file_type_for", "gguf_ties_embeddings",
           "hf_tensor_role", "needs_imatrix", "recipe_for_model", "recipe_for_torch_model",
           "tensor_type_fallback"]

#: file type -> its base tensor type (``llama_ftype_get_default_type``)
FILE_TYPES: dict[str, str] = {
    "q2_k_s": "q2_k", "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k", "q4_k_s": "q4_k",
    "q4_k_m": "q4_k", "q5_k_s": "q5_k", "q5_k_m": "q5_k", "q6_k": "q6_k", "q8_0": "q8_0",
}
#: llama.cpp tensor roles (``tensor_category``), plus the ones it never quantizes
ROLES = ("token_embd", "output", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output",
         "ffn_up", "ffn_gate", "ffn_down", "other", "position_embd", "norm", "bias")
#: roles whose tensors stay at 16 bits in every file type
UNQUANTIZED = ("position_embd", "norm", "bias")
#: the type name returned for a tensor kept at 16 bits
F16 = "f16"

_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "iq4_xs": "iq4_nl", "q4_k": "q5_0", "q5_k": "q5_1",
             "q6_k": "q8_0"}


def _more_bits(i: int, n: int) -> bool:
    """``use_more_bits``: the first and last eighth of the layers and every third in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _attn_v(ftype: str, base: str, i: int, n: int, n_gqa: int) -> str:
    if ftype == "q2_k_s" and n_gqa >= 4:
        return "q4_k"
    if ftype == "q3_k_m":
        return "q5_k" if i < 2 else "q4_k"
    if ftype == "q3_k_l":
        return "q5_k"
    if ftype in ("q4_k_m", "q5_k_m") and _more_bits(i, n):
        return "q6_k"
    if ftype == "q4_k_s" and i < 4:
        return "q5_k"
    return base


def _ffn_down(ftype: str, base: str, i: int, n: int) -> str:
    if ftype == "q2_k_s":
        return "q4_k" if i < n // 8 else base
    if ftype == "q3_k_m":
        return "q5_k" if i < n // 16 else "q4_k"
    if ftype == "q3_k_l":
        return "q5_k"
    if ftype in ("q4_k_m", "q5_k_m") and _more_bits(i, n):
        return "q6_k"
    if ftype == "q4_k_s" and i < n // 8:
        return "q5_k"
    return base


def _attn_output(ftype: str, base: str) -> str:
    return {"q3_k_m": "q4_k", "q3_k_l": "q5_k"}.get(ftype, base)


def _fits(tensor_type: str, n_per_row: int | None) -> bool:
    return n_per_row is None or n_per_row % GGUF_TYPES[tensor_type].block_values == 0


def tensor_type_fallback(tensor_type: str, n_per_row: int | None) -> str:
    """llama.cpp's ``tensor_type_fallback``: the type itself if its block divides the row, else
    its fallback type if that block does, else F16. The one rule: the per-tensor formats
    (:mod:`kscale.quant.formats.gguf`) and the file-type recipes both ask it."""
    if _fits(tensor_type, n_per_row):
        return tensor_type
    fallback = _FALLBACK.get(tensor_type)
    return fallback if fallback is not None and _fits(fallback, n_per_row) else F16


def gguf_file_type_for(role: str, layer: int | None, n_layers: int, file_type: str, *,
                       n_per_row: int | None = None, tied_embeddings: bool = False, n_gqa: int = 1,
                       is_70b: bool = False) -> str:
    """The GGUF type (``q4_k``, ..., or ``f16``) llama.cpp gives one tensor in ``file_type``.

    Args:
        role: one of :data:`ROLES`, or a tensor name (Hugging Face or GGUF, see :func:`hf_tensor_role`).
        layer: the tensor's layer index (None outside the blocks).
        n_layers: layers of the model.
        file_type: one of :data:`FILE_TYPES`.
        n_per_row: the row length llama.cpp blocks (``ne[0]``: a linear layer's input width, an
            embedding's width); None skips the divisibility rules.
        tied_embeddings: the GGUF file has no ``output.weight`` (the embedding doubles as head).
        n_gqa: query heads per key/value head; is_70b: llama.cpp's ``LLM_TYPE_70B``.
    """
    if file_type not in FILE_TYPES:
        raise ValueError(f"unknown GGUF file type {file_type!r}.{did_you_mean(file_type, list(FILE_TYPES))} "
                         f"Available: {', '.join(FILE_TYPES)}")
    if role not in ROLES:
        if "." not in role:
            raise ValueError(f"unknown tensor role {role!r}; roles: {', '.join(ROLES)} (or a tensor name)")
        role, named_layer = hf_tensor_role(role)
        layer = named_layer if layer is None else layer
    if role in UNQUANTIZED:
        return F16
    base = FILE_TYPES[file_type]
    needs_layer = role in ("attn_v", "attn_qkv", "ffn_down")
    if needs_layer and (layer is None or not 0 <= layer < n_layers):
        raise ValueError(f"{role} needs a layer index in [0, {n_layers}); got {layer!r}")
    chosen = base
    if role == "output" or (role == "token_embd" and tied_embeddings):
        if not _fits(base, n_per_row):
            chosen = "q8_0"
        elif base != "q8_0":
            chosen = "q6_k"
    elif role in ("attn_v", "attn_qkv"):
        chosen = _attn_v(file_type, base, layer, n_layers, n_gqa)
        if is_70b and chosen in ("q3_k", "q4_k"):
            chosen = "q5_k"
    elif role == "ffn_down":
        chosen = _ffn_down(file_type, base, layer, n_layers)
    elif role == "attn_output":
        chosen = _attn_output(file_type, base)
    return tensor_type_fallback(chosen, n_per_row)


def needs_imatrix(file_type: str, tensor_type: str, role: str) -> bool:
    """``tensor_requires_imatrix`` for these file types: q2_k tensors of a q2_k_s file."""
    return file_type == "q2_k_s" and tensor_type == "q2_k" and role not in ("token_embd", "output")


# Hugging Face module names -> llama.cpp roles. Suffixes are unique across the five families.
_HF_ROLES: tuple[tuple[str, str], ...] = (
    # embeddings and heads
    (r"(^|\.)(wte|embed_tokens|embed_in|word_embeddings)$", "token_embd"),
    (r"(^|\.)(wpe|embed_positions)$", "position_embd"),
    (r"(^|\.)(lm_head|embed_out)$", "output"),
    # attention
    (r"\.(attn\.c_attn|attention\.query_key_value|self_attention\.query_key_value)$", "attn_qkv"),
    (r"\.self_attn\.q_proj$", "attn_q"),
    (r"\.self_attn\.k_proj$", "attn_k"),
    (r"\.self_attn\.v_proj$", "attn_v"),
    (r"\.(attn\.c_proj|self_attn\.out_proj|self_attn\.o_proj|attention\.dense|self_attention\.dense)$",
     "attn_output"),
    # feed-forward
    (r"\.(mlp\.c_fc|fc1|mlp\.dense_h_to_4h|mlp\.up_proj)$", "ffn_up"),
    (r"\.mlp\.gate_proj$", "ffn_gate"),
    (r"\.(mlp\.c_proj|fc2|mlp\.dense_4h_to_h|mlp\.down_proj)$", "ffn_down"),
    (r"(^|\.)(ln_\w+|\w*layer_?norm\w*|norm|final_layer_norm)$", "norm"),
)
_LAYER = re.compile(r"(?:^blk|\.h|\.layers)\.(\d+)\.")
#: llama.cpp's own names: ``token_embd``, ``output``, ``blk.<i>.<role>`` (``output_norm``, ``*_norm``: norms)
_GGUF_NAME = re.compile(r"^(?:blk\.\d+\.)?(\w+?)(?:\.weight)?$")


def hf_tensor_role(module_name: str) -> tuple[str, int | None]:
    """(llama.cpp role, layer index or None) of a Hugging Face module name, e.g.
    ``transformer.h.3.attn.c_attn`` -> ``("attn_qkv", 3)``, or of a GGUF tensor name
    (``blk.3.attn_v.weight`` -> ``("attn_v", 3)``); unknown matrices are ``other``
    (llama.cpp quantizes them at the base type). A trailing ``.weight``/``.bias`` is accepted;
    ``.bias`` is role ``bias``."""
    name = module_name
    if name.endswith(".bias"):
        return "bias", _layer(name)
    gguf_name = _GGUF_NAME.match(name)
    if gguf_name and (gguf_name.group(1) in ROLES or gguf_name.group(1).endswith("_norm")):
        role = gguf_name.group(1)
        return ("norm" if role.endswith("_norm") else role), _layer(name)
    name = name.removesuffix(".weight")
    for pattern, role in _HF_ROLES:
        if re.search(pattern, name):
            return role, _layer(name)
    return "other", _layer(name)


def _layer(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def gguf_ties_embeddings(model_type: str, tie_word_embeddings: bool) -> bool:
    """True when the GGUF file llama.cpp's converter writes has no ``output.weight``. gpt2 and
    bloom copy the tied embedding into ``output.weight`` (``convert_hf_to_gguf.py``), so llama.cpp
    sees them untied; the others follow the checkpoint's ``tie_word_embeddings``."""
    if model_type in ("gpt2", "bloom"):
        return False
    return bool(tie_word_embeddings)


def recipe_for_model(shapes: dict[str, tuple[int, int]], file_type: str, *, model_type: str = "",
                     tie_word_embeddings: bool = False, n_layers: int | None = None, n_gqa: int = 1,
                     is_70b: bool = False) -> dict[str, str]:
    """GGUF type of every tensor: ``shapes`` maps Hugging Face parameter/module names to
    ``(rows, row_length)`` with ``row_length`` the width llama.cpp blocks (input features of a
    linear layer, embedding width). ``n_layers`` defaults to 1 + the largest layer index."""
    roles = {name: hf_tensor_role(name) for name in shapes}
    if n_layers is None:
        layers = [layer for _, layer in roles.values() if layer is not None]
        n_layers = max(layers) + 1 if layers else 1
    tied = gguf_ties_embeddings(model_type, tie_word_embeddings)
    out = {}
    for name, (role, layer) in roles.items():
        shape = shapes[name]
        if len(shape) < 2 and role not in UNQUANTIZED:
            role = "bias"  # any 1-D tensor: llama.cpp quantizes only 2-D and 3-D ones
        out[name] = gguf_file_type_for(role, layer, n_layers, file_type, n_per_row=int(shape[-1]),
                                       tied_embeddings=tied, n_gqa=n_gqa, is_70b=is_70b)
    return out


@dataclass(frozen=True)
class TensorAssignment:
    """One weight of a Hugging Face model under a file type: its module, llama.cpp role and layer,
    its [rows, row_length] matrix shape (row_length = what llama.cpp blocks) and the GGUF type."""

    module: str
    role: str
    layer: int | None
    shape: tuple[int, int]
    gguf_type: str


def recipe_for_torch_model(model: Any, file_type: str) -> dict[str, TensorAssignment]:
    """Every 2-D weight of a loaded Hugging Face causal LM (linear layers, Conv1D, embeddings,
    the head) with the type ``file_type`` gives it, keyed by module name. Model type, tied
    embeddings, layer count, ``n_gqa`` and 70B-ness come from ``model.config``. A head tied to the
    embedding appears under both names when llama.cpp's converter writes it twice (gpt2, bloom:
    the GGUF file then holds two tensors); otherwise only the embedding's name is listed."""
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", ""))
    tied_config = bool(getattr(config, "tie_word_embeddings", False))
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    shapes: dict[str, tuple[int, int]] = {}
    seen: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZABLE_TYPES):
            shape = tuple(weight_matrix(module).shape)
        elif isinstance(module, nn.Embedding):
            shape = tuple(module.weight.shape)
        else:
            continue
        first = seen.setdefault(id(module.weight), name)
        if first != name and gguf_ties_embeddings(model_type, tied_config):
            continue  # the GGUF file holds the shared tensor once
        shapes[name] = (int(shape[0]), int(shape[1]))
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    is_70b = model_type == "llama" and n_layers == 80
    types = recipe_for_model(shapes, file_type, model_type=model_type, tie_word_embeddings=tied_config,
                             n_layers=n_layers, n_gqa=max(1, int(heads) // int(kv_heads)), is_70b=is_70b)
    return {name: TensorAssignment(name, *hf_tensor_role(name), shapes[name], types[name]) for name in shapes}
