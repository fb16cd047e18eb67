"""The numba kernels (float32 CPU weights) give exactly the eager reference's values.

Bit identity is the claim: a sweep's rows must not depend on which kernel ran. The cases aim at
the places a re-implementation of the same float32 math could differ: the fp16 rounding of the
block constants (done on bit patterns, since numba has no float16), ties, subnormal and
overflowing constants, all-zero blocks, +-inf and NaN, centered blocks, padded small code books.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kscale.quant import QuantSpec, codebook, fake_quantize, fake_quantize_
from kscale.quant import _fast, _numba

pytestmark = pytest.mark.skipif(not _numba.available(), reason="numba not installed")


def numba_quantized(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``w`` (whole blocks of 64) through the numba kernel itself, checked to have run."""
    x = w.clone().view(-1, spec.blocksize or w.shape[-1])
    code = codebook(spec, w)
    if not _fast._run_numba_(_fast._strategy(code, spec.dtype), x, code, spec):
        # the one documented gap: a data-dependent code book with two midpoints in one
        # bit-pattern bucket has no single-correction table (the inductor kernel takes it)
        assert spec.dtype == "quantile" and _fast._lut_for(_fast.midpoints(code.float()))[2] > 1
        pytest.skip("crowded quantile code book: no numba kernel")
    return x.view(w.shape)


def test_fp16_constant_rounding_equals_torch_on_every_exponent():
    """float32 -> fp16 -> float32 on the bits equals torch's ``clamp(+-65504).half().float()``:
    random bit patterns over every float32 exponent and sign (float32 subnormals, the fp16
    subnormal range, up to overflow), every exact tie between two fp16 values (round to even),
    the clamp, +-inf and NaN; then the same values as block maxima through the kernel."""
    import numba

    @numba.njit
    def stored_all(v):
        out = np.empty_like(v)
        for i in range(v.shape[0]):
            out[i] = _numba._store(v[i], True)
        return out

    gen = np.random.default_rng(0)
    bits = gen.integers(0, 0xFFFFFFFF, size=200_000, dtype=np.uint32, endpoint=True)
    fp16 = torch.arange(0, 0x7C00, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    ties = torch.cat([(fp16[1:] + fp16[:-1]) / 2, -(fp16[1:] + fp16[:-1]) / 2])
    special = torch.tensor([0.0, -0.0, 1e-45, 5.96e-08, 2.98e-08, 2.9802322e-08, 6.1035156e-05,
                            6.1e-05, 65504.0, 65519.0, 65520.0, -65520.0, 1e30, float("inf"),
                            -float("inf"), float("nan")])
    v = torch.cat([torch.from_numpy(bits.view(np.float32).copy()), ties, special])
    expected = v.clamp(-65504, 65504).half().float()
    got = torch.from_numpy(stored_all(v.numpy()))
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got[~got.isnan()].view(torch.int32), expected[~expected.isnan()].view(torch.int32))
    # one block per value, its absmax: the kernel's constants agree with the eager reference's
    peak = v[torch.isfinite(v)].abs()
    w = torch.cat([peak[:, None], peak[:, None] * torch.rand(len(peak), 63)], dim=1)
    spec = QuantSpec(4, "nf")
    assert torch.equal(numba_quantized(w, spec), fake_quantize(w, spec, kernel="eager"))


@pytest.mark.parametrize("bits,dtype", [(2, "int"), (3, "int"), (4, "int"), (8, "int"), (2, "nf"),
                                        (3, "float"), (4, "nf"), (4, "float"), (4, "dynamic"),
                                        (8, "dynamic"), (8, "float"), (8, "nf"), (8, "quantile")])
@pytest.mark.parametrize("centered,scale_bits", [(False, 16), (True, 16), (False, 32), (True, 32)])
def test_numba_kernels_equal_eager_reference(bits, dtype, centered, scale_bits):
    torch.manual_seed(bits)
    w = torch.randn(300, 64) * torch.rand(300, 1) * 3
    w[0] = 0.0  # all-zero block: scale 0, divided by 1
    w[1] = torch.linspace(-1, 1, 64)  # exact codes and midpoints of the int grid
    w[2] = w[2] * 1e-6  # constant in the fp16 subnormal range
    w[3] = w[3] * 1e-30  # stored as 0 in fp16
    if scale_bits == 16:  # clamped to 65504; with fp32 constants inf / inf is NaN, no code
        w[4, :3] = torch.tensor([float("inf"), -float("inf"), 7.0])
    if dtype != "quantile":  # a NaN weight leaves a data-dependent code book undefined
        w[5, 5] = float("nan")
    w[6] = 1e5 * torch.sign(w[6])  # beyond fp16: clamped constant
    spec = QuantSpec(bits, dtype, centered=centered, scale_bits=scale_bits)
    expected = fake_quantize(w, spec, kernel="eager")
    got = numba_quantized(w, spec)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(expected)), spec


def test_fake_quantize_in_place_takes_the_numba_path_for_float32_only():
    """``compiled`` on float32 CPU runs numba (no inductor graph is built); half precision
    weights go to the inductor kernels."""
    w = torch.randn(128, 64)
    spec = QuantSpec(4, "nf")
    before = len(_numba.select_blocks_.signatures) if _numba.select_blocks_.signatures else 0
    y = fake_quantize_(w.clone(), spec, kernel="compiled")
    assert torch.equal(y, fake_quantize(w, spec, kernel="eager"))
    assert len(_numba.select_blocks_.signatures) >= max(before, 1)
    assert _fast._numba_call("select", codebook(QuantSpec(5, "nf")), QuantSpec(5, "nf")) is None
    assert not _fast._run_numba_("select", w.half().view(-1, 64), codebook(spec), spec)
