"""MXINT8 against the OCP MX v1.0 spec, exact storage costs, packing round trips and input errors."""
from __future__ import annotations

import math

import pytest
import torch

from kscale.quant.mx import MX_TYPES, dequantize_mx, fake_quantize_mx, quantize_mx, storage_bits


def _mxint8_spec(w: torch.Tensor) -> torch.Tensor:
    """Scalar reference from the spec text: X = 2^floor(log2 amax) (INT8's emax is 0), element
    k/64 with k = round-half-even(x / X * 64) clamped to [-127, 127]; value = X * k / 64."""
    out = torch.empty_like(w, dtype=torch.float64)
    for r in range(w.shape[0]):
        for b in range(0, w.shape[1], 32):
            block = [float(v) for v in w[r, b:b + 32]]
            amax = max(abs(v) for v in block)
            scale = 2.0 ** (math.frexp(amax)[1] - 1) if amax > 0 else 2.0 ** -127
            for j, v in enumerate(block):
                k = max(-127, min(127, round(v / scale * 64)))  # Python's round: half to even
                out[r, b + j] = scale * k / 64
    return out.to(torch.float32)


def test_mxint8_matches_the_spec_including_ties():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 128, generator=gen) * 0.02
    # ties: block max 1.0 (scale 1), values (k + 1/2) / 64 must go to the even k
    w[0, :32] = torch.cat([torch.ones(1), (torch.arange(31) - 15 + 0.5) / 64])
    w[1, :32] = 2.0 ** 3 * (1 - 2.0 ** -24)  # just below a power of two: scale 2^2, saturates at 127/64
    w[2] = 0.0
    w[3] = w[3].to(torch.bfloat16).to(torch.float32)
    ours = fake_quantize_mx(w, "mxint8")
    assert torch.equal(ours, _mxint8_spec(w))
    assert torch.allclose(ours[1, :32], torch.full((32,), 4 * 127 / 64))
    ties = ours[0, 1:32] * 64
    assert torch.equal(ties, torch.round(ties)) and (ties.to(torch.int64) % 2 == 0).all()


def test_storage_bits_exact():
    # hand-counted: mxfp4 4 + 8/32 = 4.25 bits; nvfp4 4 + 8/16 = 4.5 bits + one FP32 tensor scale
    assert storage_bits((4096, 4096), "mxfp4") == 4096 * 4096 * 17 // 4
    assert storage_bits((4096, 4096), "nvfp4") == 4096 * 4096 * 9 // 2 + 32
    assert storage_bits((10, 96), "mxfp6_e2m3") == 10 * 3 * (32 * 6 + 8)
    assert storage_bits((2, 3, 64), "mxint8") == 6 * 2 * (32 * 8 + 8)


def test_ggml_types_cost_what_gguf_says():
    gguf = pytest.importorskip("gguf", reason="gguf (dev extra) not installed")
    for name, qtype in (("gguf_mxfp4", "MXFP4"), ("gguf_nvfp4", "NVFP4")):
        block, type_bytes = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)]
        assert MX_TYPES[name].block_values == block
        assert storage_bits((7, 4 * block), name) == 7 * 4 * type_bytes * 8


@pytest.mark.parametrize("name", sorted(MX_TYPES))
def test_pack_round_trip_and_byte_count(name):
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(3, 2, 128, generator=gen) * 0.05
    packed = quantize_mx(w, name)
    assert packed.elements.dtype == torch.uint8 and packed.scales.dtype == torch.uint8
    assert 8 * packed.to_bytes().numel() == storage_bits(w.shape, name)
    values = dequantize_mx(packed, name, w.shape)
    assert values.dtype == torch.float32 and values.shape == w.shape
    assert torch.equal(values, fake_quantize_mx(w, name))
    # bf16 and fp16 inputs are exact in float32: same result
    half = w.to(torch.bfloat16)
    assert torch.equal(fake_quantize_mx(half, name), fake_quantize_mx(half.to(torch.float32), name))


@pytest.mark.parametrize("name", sorted(MX_TYPES))
def test_error_shrinks_with_element_bits_and_zero_stays_zero(name):
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(3)) * 0.02
    rel = ((fake_quantize_mx(w, name) - w).norm() / w.norm()).item()
    bound = {4: 0.13, 6: 0.065, 8: 0.065}[MX_TYPES[name].element_bits]
    assert 0 < rel < bound
    assert torch.equal(fake_quantize_mx(torch.zeros(2, 128), name), torch.zeros(2, 128))


def test_bad_inputs_fail_with_one_clear_message():
    with pytest.raises(ValueError, match="blocks of 64 values; a row of 96"):
        quantize_mx(torch.randn(2, 96), "gguf_nvfp4")
    with pytest.raises(ValueError, match="Did you mean 'mxfp4'"):
        fake_quantize_mx(torch.randn(2, 32), "mxfp5")
    with pytest.raises(ValueError, match="floating-point"):
        fake_quantize_mx(torch.ones(2, 32, dtype=torch.int32), "mxfp4")
    with pytest.raises(ValueError, match="not a multiple"):
        storage_bits((4, 33), "mxfp8_e4m3")
