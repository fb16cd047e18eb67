"""llama.cpp's MXFP4 and NVFP4 (``gguf_mxfp4``, ``gguf_nvfp4``), as ggml's reference quantizer rounds.

Read from ggml/src/ggml-quants.c (``quantize_row_mxfp4_ref``, ``quantize_row_nvfp4_ref``,
``best_index_mxfp4``) and ggml-impl.h (``ggml_fp32_to_ue4m3``, ``ggml_ue4m3_to_fp32``,
``ggml_e8m0_to_fp32_half``); written here in torch, vectorised over blocks.

Both keep codes as indices into ``kvalues_mxfp4 = 2 * E2M1`` and scales that carry a factor 1/2:

* Element choice: the first index of the smallest ``|kvalue * d - x|`` in code order
  ``0, 1, 2, 3, 4, 6, 8, 12, 0, -1, ..., -12``: a tie goes to the *smaller magnitude* (the OCP
  types go to the even code), and a value that rounds to zero gets code 0 whatever its sign.
  Every distance between neighbouring grid points is exact in float32 (Sterbenz), so the first
  minimum is exactly "count of midpoints strictly below |x|".
* MXFP4 (32 values): ``e = floor(log2f(amax)) - 2 + 127`` (0 for an all-zero block), ``d =
  2^(e - 128)``. ``log2f`` is float32: for ``amax`` one or two ulps below a power of two it rounds
  up to the integer, and the exponent comes out one larger than OCP's. Emulated as the float64
  log2 rounded to float32 (glibc's log2f is accurate far below half an ulp there).
* NVFP4 (64 values = four sub-blocks of 16): ``ue = fp32_to_ue4m3(amax / 6)`` -- unsigned E4M3
  with the 4th mantissa bit rounded half up, subnormals ``(int)(x * 512 + 0.5)``, inputs above
  448 clamped and exponents >= 15 saturated to code 0x7E -- and ``d = ue4m3_to_fp32(ue) / 2``.
  No per-tensor scale.

Block bytes: ``block_mxfp4 {uint8 e; uint8 qs[16]}`` with ``qs[j] = code[j] | code[j+16] << 4``;
``block_nvfp4 {uint8 d[4]; uint8 qs[32]}`` with ``qs[8s + j] = code[16s + j] | code[16s + j + 8] << 4``.
"""
from __future__ import annotations

import torch

__all__ = ["KVALUES", "decode", "e8m0_half", "encode", "ue4m3_decode_half", "ue4m3_encode"]

#: ggml's ``kvalues_mxfp4``: twice the E2M1 values, in E2M1 code order
KVALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)
#: midpoints between neighbouring positive kvalues
_MIDPOINTS = (0.5, 1.5, 2.5, 3.5, 5.0, 7.0, 10.0)


def e8m0_half(e: torch.Tensor) -> torch.Tensor:
    """``ggml_e8m0_to_fp32_half``: float32 ``2^(e - 128)`` from its bit pattern (subnormal for e < 2)."""
    e = e.to(torch.int32)
    bits = torch.where(e >= 2, (e - 1) << 23, torch.full_like(e, 0x00200000) << e)
    return bits.view(torch.float32)


def ue4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """``ggml_fp32_to_ue4m3`` on a float32 tensor -> uint8 codes (see module docstring)."""
    x = torch.minimum(x, torch.full_like(x, 448.0))
    bits = x.view(torch.int32)
    exponent = ((bits >> 23) & 0xFF) - 127 + 7
    # subnormal: man = (int)(x * 512.0f + 0.5f), both float32 operations, kept in 1..7
    sub = torch.trunc(x * 512.0 + 0.5).clamp_(max=7).to(torch.int32)
    sub = torch.where(sub < 1, torch.zeros_like(sub), sub)
    mantissa = ((bits >> 20) & 0x7) + ((bits >> 19) & 1)  # top 3 bits, rounded half up
    carry = mantissa > 7
    exponent_up = exponent + carry.to(torch.int32)
    normal = (exponent_up << 3) | torch.where(carry, torch.zeros_like(mantissa), mantissa)
    normal = torch.where(exponent_up >= 15, torch.full_like(normal, 0x7E), normal)
    code = torch.where(exponent <= 0, sub, normal)
    return torch.where(x > 0, code, torch.zeros_like(code)).to(torch.uint8)


def ue4m3_decode_half(code: torch.Tensor) -> torch.Tensor:
    """``ggml_ue4m3_to_fp32``: half the unsigned E4M3 value (0 for codes 0 and 0x7F)."""
    c = code.to(torch.int32)
    exponent, mantissa = (c >> 3) & 0xF, (c & 0x7).to(torch.float32)
    power = ((exponent - 7 + 127).clamp(min=1) << 23).view(torch.float32)  # 2^(exp - 7), exact
    raw = torch.where(exponent == 0, mantissa * 2.0 ** -9, (1.0 + mantissa / 8.0) * power)
    return torch.where((c == 0) | (c == 0x7F), torch.zeros_like(raw), raw * 0.5)


def _nearest_kvalue(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """uint8 codes of ``best_index_mxfp4(x, d)``: nearest ``kvalue * d``, ties to the smaller magnitude."""
    ax = x.abs()
    mids = torch.tensor(_MIDPOINTS, dtype=torch.float32, device=x.device)
    safe_d = torch.where(d > 0, d, torch.ones_like(d))
    code = torch.bucketize(ax / safe_d, mids)  # count of midpoints < |x|/d; the division may be off by an ulp
    inf = torch.tensor([float("inf")], device=x.device)
    below = torch.cat([-inf, mids])[code] * safe_d  # exact products: few significant bits
    above = torch.cat([mids, inf])[code] * safe_d
    code = code - (ax <= below).to(code.dtype) + (ax > above).to(code.dtype)
    code = torch.where(d > 0, code, torch.zeros_like(code))
    negative = (x < 0) & (code > 0)
    return (code + 8 * negative.to(code.dtype)).to(torch.uint8)


def _mxfp4_exponent(amax: torch.Tensor) -> torch.Tensor:
    log2f = torch.log2(amax.to(torch.float64)).to(torch.float32)  # float32 rounding of log2, as log2f
    e = torch.floor(log2f).clamp_(-127, 127).to(torch.int32) - 2 + 127
    return torch.where(amax > 0, e.clamp(0, 254), torch.zeros_like(e))


def encode(blocks: torch.Tensor, mx) -> tuple[torch.Tensor, torch.Tensor, None]:
    """float32 [rows, nb, block] -> (kvalue codes [rows, nb, block], scale codes [rows, nb, scales_per_block], None)."""
    rows, nb, _ = blocks.shape
    sub = blocks.reshape(rows, nb, mx.scales_per_block, mx.scale_values)
    amax = sub.abs().amax(-1, keepdim=True)
    if mx.scales_per_block == 1:  # MXFP4
        scale_codes = _mxfp4_exponent(amax).to(torch.uint8)
        d = e8m0_half(scale_codes)
    else:  # NVFP4: amax / 6.0f in float32
        scale_codes = ue4m3_encode(amax / 6.0)
        d = ue4m3_decode_half(scale_codes)
    codes = _nearest_kvalue(sub, d)
    return codes.reshape(blocks.shape), scale_codes.reshape(rows, nb, mx.scales_per_block), None


def decode(codes: torch.Tensor, scales: torch.Tensor, tensor_scale: float | None, mx) -> torch.Tensor:
    rows, nb, _ = codes.shape
    if mx.scales_per_block == 1:
        d = e8m0_half(scales)
    else:
        d = ue4m3_decode_half(scales)
    kvalues = torch.tensor(KVALUES, dtype=torch.float32, device=codes.device)[codes.long()]
    values = kvalues.reshape(rows, nb, mx.scales_per_block, mx.scale_values) * d.reshape(rows, nb, -1, 1)
    return values.reshape(codes.shape)
