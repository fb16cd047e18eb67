"""llama.cpp's GGUF per-tensor types in torch, byte-exact with ggml's reference quantizer.

``GGUF_TYPES`` (q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k iq4_nl iq4_xs) describes each
type; :func:`quantize_gguf` gives ggml's block bytes, :func:`dequantize_gguf` their values and
:func:`fake_quantize_gguf` both. Importable without libggml or gguf (those are test references,
see :mod:`kscale.quant.gguf.ggml_reference`). Which type each tensor of a model gets (llama.cpp's
file types such as Q4_K_M) lives in :mod:`kscale.quant.gguf.recipes`.
"""
from __future__ import annotations

from .kernels import dequantize_gguf, fake_quantize_gguf, gguf_type, quantize_gguf
from .types import GGUF_TYPES, GGUFType

__all__ = ["GGUF_TYPES", "GGUFType", "dequantize_gguf", "fake_quantize_gguf", "gguf_type", "quantize_gguf"]
