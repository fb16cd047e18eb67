"""Microscaling types against their reference implementations (issue 18 section 3).

* OCP MX and NVFP4: value for value (and code for code) equal to torchao's ``MXTensor.to_mx``
  (default FLOOR scaling) and ``NVFP4Tensor.to_nvfp4`` with a per-tensor scale.
* ggml's MXFP4 / NVFP4: byte for byte equal to ``ggml_quantize_chunk`` (PyPI libggml-python),
  and the fake-quantized values bit for bit equal to ``gguf.quants.dequantize`` of those bytes.

The inputs hold what separates a right implementation from a nearly right one: values exactly
on rounding midpoints (ties), bf16-valued data, block maxima one to eight ulps below a power of
two (where ggml's float ``log2f`` exponent differs from OCP's), all-zero blocks, one outlier,
heavy tails, and magnitudes small enough for subnormal NVFP4 scales.
"""
from __future__ import annotations

import math

import pytest
import torch

from kscale.quant.mx import MX_TYPES, fake_quantize_mx, quantize_mx
from kscale.quant.mx.packing import unpack_codes

N = 256


def _e2m1_grid() -> torch.Tensor:
    return torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _tie_block(grid: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A block whose max is the element's max (so its scale is 2^0) and whose other values sit
    exactly on midpoints between neighbouring grid points, with random signs."""
    mids = (grid[:-1] + grid[1:]) / 2
    pick = mids[torch.randint(len(mids), (size - 1,), generator=gen)]
    signs = torch.where(torch.rand(size - 1, generator=gen) < 0.5, -1.0, 1.0)
    return torch.cat([grid[-1:], pick * signs])


def tricky_matrix(grid: torch.Tensor, block: int, seed: int = 0) -> torch.Tensor:
    """float32 [rows, 256] with the cases listed in the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randn(N, generator=gen) * 0.02 for _ in range(8)]
    rows += [torch.distributions.StudentT(3.0).sample((N,)) * 0.02 for _ in range(4)]
    for scale in (2.0 ** -7, 2.0 ** -2, 1.0, 2.0 ** 3):  # ties at several block scales
        rows.append(torch.cat([_tie_block(grid, block, gen) for _ in range(N // block)]) * scale)
    for power in (-5, -1, 3):  # block maxima j ulps below 2^power, j = 1..8
        row = torch.randn(N, generator=gen) * 2.0 ** (power - 4)
        for j in range(N // 32):
            row[32 * j] = 2.0 ** power * (1 - (j % 8 + 1) * 2.0 ** -24)
        rows.append(row)
    outlier = torch.randn(N, generator=gen) * 0.02
    outlier[17] = 3.0
    rows += [torch.zeros(N), outlier]
    rows += [torch.randn(N, generator=gen) * s for s in (1e-4, 3e-6)]  # subnormal / tiny E4M3 scales
    return torch.stack(rows)


def _inputs(grid: torch.Tensor, block: int):
    w = tricky_matrix(grid, block)
    return {"float32": w, "bfloat16": w.to(torch.bfloat16).to(torch.float32)}


# ---------------------------------------------------------------------------------- torchao

def _torchao():
    """torchao's MX and NVFP4 modules (dev extra), or skip."""
    mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor", reason="torchao (dev extra) not installed")
    from torchao.prototype.mx_formats import kernels, nvfp4_tensor

    return mx_tensor, nvfp4_tensor, kernels


TORCHAO_ELEMENTS = {  # torchao's element dtypes (its FP6 constants are these strings)
    "mxfp4": torch.float4_e2m1fn_x2,
    "mxfp6_e2m3": "fp6_e2m3",
    "mxfp6_e3m2": "fp6_e3m2",
    "mxfp8_e4m3": torch.float8_e4m3fn,
    "mxfp8_e5m2": torch.float8_e5m2,
}


def _element_grid(name: str) -> torch.Tensor:
    """Non-negative finite values of the element format, ascending, from torch/torchao itself."""
    elem = TORCHAO_ELEMENTS[name]
    if isinstance(elem, torch.dtype) and elem.itemsize == 1 and elem != torch.float4_e2m1fn_x2:
        values = torch.arange(128, dtype=torch.uint8).view(elem).to(torch.float32)
        return values[torch.isfinite(values)].unique()
    if name == "mxfp4":
        return _e2m1_grid()
    kernels = _torchao()[2]
    decode = kernels.f6_e2m3_unpacked_to_f32 if name == "mxfp6_e2m3" else kernels.f6_e3m2_unpacked_to_f32
    return decode(torch.arange(32, dtype=torch.uint8)).unique()


@pytest.mark.parametrize("name", sorted(TORCHAO_ELEMENTS))
def test_ocp_mx_equals_torchao_to_mx(name):
    mx_tensor = _torchao()[0]
    for label, w in _inputs(_element_grid(name), 32).items():
        ref = mx_tensor.MXTensor.to_mx(w, TORCHAO_ELEMENTS[name], 32)
        packed = quantize_mx(w, name)
        ours = fake_quantize_mx(w, name)
        theirs = ref.dequantize(torch.float32)
        assert torch.equal(ours, theirs), f"{name} {label}: {(ours != theirs).sum()} values differ from torchao"
        assert torch.equal(packed.scales.reshape(-1), ref.scale.view(torch.uint8).reshape(-1)), f"{name} {label} scales"
        codes = unpack_codes(packed.elements, MX_TYPES[name]).reshape(w.shape)
        their_codes = ref.qdata.view(torch.uint8)
        if name == "mxfp4":  # torchao packs two codes per byte like we do
            assert torch.equal(packed.elements.reshape(w.shape[0], -1), their_codes)
        else:
            assert torch.equal(codes, their_codes.reshape(w.shape)), f"{name} {label} codes"


def test_ocp_inputs_hold_ties_and_saturation():
    """The tie rows really are ties: half of their non-max values round up, half down (to even)."""
    w = tricky_matrix(_e2m1_grid(), 32)[12]  # ties at scale 2^-7
    q = fake_quantize_mx(w, "mxfp4")
    moved = (q - w).abs() / 2.0 ** -7
    ties = moved[w != 0] != 0
    assert ties.float().mean() > 0.9  # every midpoint moves by half a step
    assert (moved[ties] <= 1.0).all()


def test_nvfp4_equals_torchao_to_nvfp4_with_tensor_scale():
    nvfp4_tensor = _torchao()[1]
    for label, w in _inputs(_e2m1_grid(), 16).items():
        tensor_scale = nvfp4_tensor.per_tensor_amax_to_scale(w.abs().amax())
        ref = nvfp4_tensor.NVFP4Tensor.to_nvfp4(w, per_tensor_scale=tensor_scale)
        packed = quantize_mx(w, "nvfp4")
        ours, theirs = fake_quantize_mx(w, "nvfp4"), ref.dequantize(torch.float32)
        assert torch.equal(ours, theirs), f"nvfp4 {label}: {(ours != theirs).sum()} values differ"
        assert packed.tensor_scale == float(tensor_scale)
        assert torch.equal(packed.scales.reshape(-1), ref.scale.view(torch.uint8).reshape(-1))
        assert torch.equal(packed.elements.reshape(w.shape[0], -1), ref.qdata.view(torch.uint8))


# ---------------------------------------------------------------------------------- ggml

GGML_TYPES = {"gguf_mxfp4": "MXFP4", "gguf_nvfp4": "NVFP4"}


def _ggml_quantize(w: torch.Tensor, name: str) -> torch.Tensor:
    gguf = pytest.importorskip("gguf", reason="gguf (dev extra) not installed")
    from kscale.quant.gguf.ggml_reference import ggml_available, ggml_quantize

    if not ggml_available():
        pytest.skip("libggml-python (dev extra) not installed: no ggml reference quantizer")
    qtype = getattr(gguf.GGMLQuantizationType, GGML_TYPES[name], None)
    if qtype is None:
        pytest.skip(f"this gguf has no {GGML_TYPES[name]} type id")
    return ggml_quantize(w, int(qtype)), qtype


@pytest.mark.parametrize("name", sorted(GGML_TYPES))
def test_ggml_fp4_bytes_equal_ggml_quantize_chunk(name):
    for label, w in _inputs(_e2m1_grid(), 16 if name == "gguf_nvfp4" else 32).items():
        ref, qtype = _ggml_quantize(w, name)
        ours = quantize_mx(w, name).to_bytes().reshape(ref.shape)
        bad_rows = (ours != ref).any(dim=1).nonzero().flatten().tolist()
        assert not bad_rows, f"{name} {label}: rows {bad_rows} differ from ggml's bytes"
        from gguf.quants import dequantize as gguf_dequantize

        values = torch.from_numpy(gguf_dequantize(ref.numpy(), qtype)).reshape(w.shape)
        fake = fake_quantize_mx(w, name)
        assert torch.equal(fake.view(torch.int32), values.view(torch.int32)), f"{name} {label} dequantize"


def test_ggml_and_ocp_fp4_differ_where_the_issue_says():
    """ggml's MXFP4 takes its exponent from float32 log2f: one larger than OCP's when the block max
    is so few ulps below 2^p that log2 rounds up to p, i.e. when j ulps * (1 / ln 2) = j * 2^-24 /
    ln 2 is under half an ulp of the float32 near p; and it sends ties to the smaller magnitude."""
    w = tricky_matrix(_e2m1_grid(), 32)
    near_power = w[16:19]
    ggml_e = quantize_mx(near_power, "gguf_mxfp4").scales.reshape(3, 8).to(torch.int32)
    ocp_e = quantize_mx(near_power, "mxfp4").scales.reshape(3, 8).to(torch.int32)
    expected = torch.zeros(3, 8, dtype=torch.int32)
    for row, power in enumerate((-5, -1, 3)):
        binade = math.floor(math.log2(abs(power) + (1e-6 if power < 0 else -1e-6)))
        half_ulp = 2.0 ** (binade - 24)
        for j in range(8):
            expected[row, j] = int((j + 1) * 2.0 ** -24 / math.log(2) < half_ulp)
    assert expected.sum() == 3  # -5: 1 and 2 ulps below; 3: 1 ulp below; -1: never
    assert torch.equal(ggml_e - ocp_e, expected)
    ties = w[12:16]
    ocp, ggml = fake_quantize_mx(ties, "mxfp4"), fake_quantize_mx(ties, "gguf_mxfp4")
    differ = ocp != ggml
    assert differ.any() and (ggml[differ].abs() < ocp[differ].abs()).all()
