"""kscale's nf4 and dynamic-8 codes against bitsandbytes on the same weights (B=64, fp32 absmax).

Does kscale's nf4 equal QLoRA's? Yes. With ``QuantSpec(4, "nf", blocksize=64, scale_bits=32)``
the block absmax values are bit-identical to ``bitsandbytes.functional.quantize_4bit(w,
blocksize=64, quant_type="nf4")``'s and so are the 4-bit codes, except at rounding ties.
Measured (bitsandbytes 0.50.2 on CPU, its torch ``bucketize`` path), on N(0,1) matrices of
2047 x 2049 = 4,194,303 values, seeds 0/1/2: 0/2/0 codes differ in fp32 and 0/1/0 in fp16
(at most 4.8e-7 of values). Every one of them lies within 1e-7 of the midpoint between two
codes, where kscale's midpoints (from its own NF4 table, equal to bitsandbytes' within 6e-8)
and bitsandbytes' bucket bounds round differently. Where the codes agree, the dequantized
values differ by at most 4.8e-7 (fp32; one fp16 ulp for fp16 weights).

Dynamic 8-bit (``quantize_blockwise``, blocksize 64, the signed dynamic map): the codebooks
agree within 7.5e-9 and the absmax values exactly, but bitsandbytes' CPU kernel finds the code
by bisection and does not always return the nearest one. Measured on the same matrices:
0.134-0.136% of fp32 values (5,603-5,698 of 4.19M) and 0.140-0.146% of fp16 values get a
different code, up to 4 codes away (near zero, where the map is dense), costing up to 3.0e-5
(in units of the block absmax) more error than the nearest code. kscale's code is never the
worse one, value by value, except at exact midpoint ties (2 values in fp32, about 180 in fp16,
whose coarse grid lands on midpoints often), where the two errors differ by float rounding.
"""
from __future__ import annotations

import pytest
import torch

from kscale.quant import QuantSpec, quantize
from kscale.quant.core import codebook

pytestmark = pytest.mark.slow  # importing bitsandbytes takes seconds

SHAPE = (2047, 2049)  # 4.19M values; odd count and a ragged last block (63 values)
TIE = 1e-7  # |x - midpoint| below which two codes are a rounding tie (units of block absmax)


@pytest.fixture(scope="module")
def bnbf():
    F = pytest.importorskip("bitsandbytes.functional")
    return F


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(1)  # the seed with ties, so the tie allowance below is exercised
    return torch.randn(SHAPE)


def _normalized(w: torch.Tensor, absmax: torch.Tensor, bs: int = 64) -> torch.Tensor:
    flat = w.reshape(-1).float()
    return flat / absmax.float().repeat_interleave(bs)[: flat.numel()]


def _is_tie(x: torch.Tensor, code: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (x - (code[a] + code[b]) / 2).abs() <= TIE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nf4_codes_equal_bitsandbytes(bnbf, weights, dtype):
    w = weights.to(dtype)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    ours = quantize(w, QuantSpec(bits=4, dtype="nf", blocksize=64, scale_bits=32))
    # bitsandbytes packs the first value in the high nibble, kscale in the low one
    b = packed.reshape(-1)
    theirs = torch.stack([b >> 4, b & 0x0F], dim=1).reshape(-1)[: w.numel()].long()
    mine = ours.indices()

    assert torch.equal(ours.scale, state.absmax)  # fp32 absmax, bit for bit
    code = state.code.float()
    assert torch.allclose(codebook(ours.spec), code, rtol=0, atol=1e-7)
    differ = mine != theirs
    assert differ.sum() <= 1e-6 * w.numel()
    x = _normalized(w, state.absmax)
    assert _is_tie(x[differ], code, mine[differ], theirs[differ]).all()
    # Where the codes agree, dequantized values differ only by the tables' float rounding.
    deq = bnbf.dequantize_4bit(packed, state, blocksize=64, quant_type="nf4").reshape(-1).float()
    same = ~differ
    rtol = 0.0 if dtype == torch.float32 else 1e-3  # fp16 output: one ulp is 2^-11 relative
    assert torch.allclose(ours.dequantize().reshape(-1).float()[same], deq[same], rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dynamic8_nearest_code_never_worse_than_bitsandbytes(bnbf, weights, dtype):
    w = weights.to(dtype)
    q, state = bnbf.quantize_blockwise(w, blocksize=64)
    ours = quantize(w, QuantSpec(bits=8, dtype="dynamic", blocksize=64, scale_bits=32))
    theirs = q.reshape(-1).long()
    mine = ours.indices()

    assert torch.equal(ours.scale, state.absmax)
    code = state.code.float()
    assert torch.allclose(codebook(ours.spec), code, rtol=0, atol=1e-8)
    agree = (mine == theirs).float().mean().item()
    assert agree >= 0.99
    assert agree < 1.0  # bitsandbytes' bisection really misses the nearest code sometimes
    # Value by value, measured with bitsandbytes' own codebook: kscale's code is the nearer one
    # (or an exact tie, where float rounding decides).
    x = _normalized(w, state.absmax)
    err_ours, err_theirs = (code[mine] - x).abs(), (code[theirs] - x).abs()
    worse = err_ours > err_theirs
    assert _is_tie(x[worse], code, mine[worse], theirs[worse]).all()
    assert (err_theirs - err_ours).max() > 1e-6  # bitsandbytes' misses cost real error
    # The same in dequantized values, up to the float rounding of code * absmax.
    am = state.absmax.float().repeat_interleave(64)[: w.numel()]
    flat = w.reshape(-1).float()
    e_ours = (ours.dequantize().reshape(-1).float() - flat).abs()
    e_theirs = (bnbf.dequantize_blockwise(q, state, blocksize=64).reshape(-1).float() - flat).abs()
    slack = 1e-7 * am if dtype == torch.float32 else 1e-3 * am  # fp16 output rounding
    assert torch.all(e_ours <= e_theirs + slack)
