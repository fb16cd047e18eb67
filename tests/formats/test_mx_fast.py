"""The fused numba MX kernels are bit-identical to the eager path, in place and out of place,
including NaN/Inf blocks, signed zeros, E8M0's smallest scale and saturation."""
from __future__ import annotations

import pytest
import torch

from kscale.quant.mx import MX_TYPES, fake_quantize_mx, fake_quantize_mx_
from kscale.quant.mx import fast

FUSED = sorted(MX_TYPES)


def _cases() -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(40, 64, generator=gen) * 0.02
    w[0] = torch.randn(64, generator=gen).to(torch.bfloat16).float()
    w[1, :32] = torch.tensor([6.0] + [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0] * 4 + [-2.5, -0.25, 3.0])
    w[2, 0], w[2, 40] = float("nan"), float("inf")
    w[3] = -0.0
    w[4] = 1e-40  # float32 subnormals: E8M0 code 0 (2^-127)
    w[5] = torch.randn(64, generator=gen) * 1e4
    w[6, :32] = 2.0 ** -5 * (1 - 2.0 ** -24)
    return w


@pytest.mark.skipif(not fast.available(), reason="numba not installed")
@pytest.mark.parametrize("name", FUSED)
def test_fused_kernel_is_bit_identical_to_eager(name):
    w = _cases() if MX_TYPES[name].family == "ocp" else _cases()[[0, 1, 3, 5, 6] + list(range(7, 40))]
    if MX_TYPES[name].family == "ggml":  # plus blocks whose NVFP4 scale is 0 or subnormal
        w = torch.cat([w, torch.randn(4, 64, generator=torch.Generator().manual_seed(5)) * 1e-5])
    eager = fake_quantize_mx(w, name, kernel="eager")
    fused = fake_quantize_mx(w, name, kernel="fast")
    assert torch.equal(fused.view(torch.int32), eager.view(torch.int32))
    inplace = w.clone()
    assert fake_quantize_mx_(inplace, name) is inplace
    assert torch.equal(inplace.view(torch.int32), eager.view(torch.int32))


def test_fused_kernel_declines_what_it_cannot_do():
    with pytest.raises(ValueError, match="no fused kernel"):
        fake_quantize_mx(torch.randn(2, 64, dtype=torch.bfloat16), "mxfp4", kernel="fast")
    half = torch.randn(2, 64, dtype=torch.float16)
    expected = fake_quantize_mx(half, "nvfp4").to(torch.float16)
    assert torch.equal(fake_quantize_mx_(half, "nvfp4"), expected)
