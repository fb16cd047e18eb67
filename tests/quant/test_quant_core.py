"""quantize / fake_quantize against brute-force references."""
from __future__ import annotations

import pytest
import torch

from kscale.quant import QuantSpec, codebook, compiled_kernel_available, fake_quantize, quantize

ALL_DTYPES = ["int", "float", "dynamic", "quantile", "nf"]


def _ref_constants(w: torch.Tensor, spec: QuantSpec):
    """Constants by a slow loop over row-major slices (no padding trick), stored precision."""
    flat = w.detach().reshape(-1).double()
    bs = spec.blocksize or w.shape[-1]
    store = torch.float16 if spec.scale_bits == 16 else torch.float32
    scales, offsets = [], []
    for start in range(0, flat.numel(), bs):
        blk = flat[start : start + bs]
        if spec.centered:
            hi, lo = blk.max().float(), blk.min().float()
            offsets.append(((hi + lo) / 2).to(store).float())
            scales.append(((hi - lo) / 2).to(store).float())
        else:
            scales.append(blk.abs().max().float().to(store).float())
            offsets.append(torch.tensor(0.0))
    return torch.stack(scales), torch.stack(offsets), bs


def _check_nearest(w, spec):
    q = quantize(w, spec)
    scale, offset, bs = _ref_constants(w, spec)
    assert torch.equal(q.scale.float(), scale)
    if spec.centered:
        assert torch.equal(q.offset.float(), offset)
    n = w.numel()
    s = scale.repeat_interleave(bs)[:n]
    o = offset.repeat_interleave(bs)[:n]
    x = w.detach().reshape(-1).float()
    xn = torch.where(s == 0, torch.zeros_like(x), (x - o) / torch.where(s == 0, torch.ones_like(s), s))
    code = q.code.float()
    dist = (xn[:, None] - code[None, :]).abs()  # brute force argmin
    chosen = code[q.indices()]
    assert torch.all((xn - chosen).abs() <= dist.min(dim=1).values + 1e-6)
    deq = q.dequantize()
    assert torch.equal(deq.reshape(-1).float(), (chosen * s + o).to(w.dtype).float())
    assert torch.equal(fake_quantize(w, spec, kernel="eager"), deq)
    return q


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_nearest_code_brute_force(dtype, bits):
    torch.manual_seed(bits)
    w = torch.randn(13, 37) * torch.rand(13, 1) * 3  # 481 values: ragged for 64 and 7
    for blocksize in (7, 64, None):
        for centered in (False, True):
            spec = QuantSpec(bits, dtype, blocksize=blocksize, centered=centered)
            q = _check_nearest(w + 0.3 * centered, spec)
            n_blocks = 13 if blocksize is None else -(-481 // blocksize)
            assert q.scale.numel() == n_blocks


def test_ragged_last_block_has_own_constant():
    w = torch.ones(130)
    w[128:] = 100.0  # the two values of the ragged last block
    q = quantize(w, QuantSpec(4, "int", blocksize=64))
    assert q.scale.tolist() == [1.0, 1.0, 100.0]
    assert torch.equal(q.dequantize(), w)


def test_per_row_blocks_follow_dim0():
    w = torch.randn(5, 12) * torch.arange(1, 6).float()[:, None]
    q = quantize(w, QuantSpec(4, "nf", blocksize=None))
    assert torch.equal(q.scale.float(), w.abs().amax(1).half().float())


def test_scale_bits_stored_precision_is_used():
    w = torch.tensor([1.0001, 0.5, -0.25, 0.75] * 16)  # absmax 1.0001 is not an fp16 number
    q16 = quantize(w, QuantSpec(8, "int", scale_bits=16))
    q32 = quantize(w, QuantSpec(8, "int", scale_bits=32))
    assert q16.scale.dtype == torch.float16 and q32.scale.dtype == torch.float32
    assert q16.scale.item() == 1.0 and q32.scale.item() == pytest.approx(1.0001, abs=1e-7)
    # the absmax value dequantizes to code 1 x the *stored* constant
    assert q16.dequantize()[0].item() == 1.0
    assert q32.dequantize()[0].item() == torch.tensor(1.0001).item()
    assert q16.constant_bits == 16 and q32.constant_bits == 32


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_bits16_is_identity(dtype):
    w = torch.randn(7, 9)
    out = fake_quantize(w, QuantSpec(16, dtype))
    assert torch.equal(out, w) and out.data_ptr() != w.data_ptr()
    with pytest.raises(ValueError, match="bits=16 is the unquantized baseline"):
        quantize(w, QuantSpec(16, dtype))


@pytest.mark.parametrize("dtype", ["int", "float", "nf"])
@pytest.mark.parametrize("centered", [False, True])
def test_idempotent(dtype, centered):
    # types whose codebook holds both -1 and +1 reproduce their block constants exactly
    w = torch.randn(33, 65)
    spec = QuantSpec(4, dtype, blocksize=64, centered=centered)
    once = fake_quantize(w, spec)
    assert torch.equal(fake_quantize(once, spec), once)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_error_falls_as_bits_rise(dtype):
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    mse = [((fake_quantize(w, QuantSpec(b, dtype)) - w) ** 2).mean().item() for b in range(2, 9)]
    assert all(a > b for a, b in zip(mse, mse[1:])), mse
    assert mse[-1] < 2e-3 * mse[0]


def test_nf_beats_int_on_gaussian_weights():
    torch.manual_seed(0)
    w = torch.randn(256, 256)
    mse = {d: ((fake_quantize(w, QuantSpec(4, d)) - w) ** 2).mean().item() for d in ("nf", "int")}
    assert mse["nf"] < 0.8 * mse["int"], mse


@pytest.mark.parametrize("wdtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(wdtype):
    w = (torch.randn(9, 70) * 0.05).to(wdtype)
    for dtype in ALL_DTYPES:
        spec = QuantSpec(4, dtype)
        out = fake_quantize(w, spec)
        assert out.dtype == wdtype and out.shape == w.shape
        ref = fake_quantize(w.float(), spec).to(wdtype)  # same math in float32, then cast
        assert torch.equal(out, ref)
        _check_nearest(w, spec)


def test_packing_roundtrip_and_storage():
    w = torch.randn(3, 33)  # odd count: last byte half used
    q = quantize(w, QuantSpec(4, "float"))
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == 50
    q8 = quantize(w, QuantSpec(8, "dynamic"))
    assert q8.codes.numel() == 99 and q8.payload_bits == 99 * 8
    idx = torch.bucketize((w.reshape(-1) / q.scale.float().repeat_interleave(64)[:99]), (q.code[1:] + q.code[:-1]) / 2)
    assert torch.equal(q.indices(), idx)


def test_quantile_costs_its_codebook():
    w = torch.randn(8, 64)
    q = quantize(w, QuantSpec(3, "quantile"))
    assert q.constant_bits == 8 * 16 + 8 * 16  # 8 blocks + 2^3 codes, all at 16 bits


def test_non_float_input_is_rejected():
    with pytest.raises(ValueError, match="floating-point tensor"):
        fake_quantize(torch.ones(4, dtype=torch.int32), QuantSpec(4))


def test_zero_block():
    w = torch.zeros(2, 64)
    w[1] = torch.randn(64)
    for centered in (False, True):
        out = fake_quantize(w, QuantSpec(4, "nf", centered=centered))
        assert torch.equal(out[0], w[0]) and torch.isfinite(out).all()


@pytest.mark.slow
def test_fused_kernels_identical_to_eager():
    """The compiled fast paths give bit-identical results to the eager reference."""
    if not compiled_kernel_available():
        pytest.skip("torch.compile unavailable here (no C++ compiler?)")
    torch.manual_seed(0)
    w = torch.randn(96, 130) * torch.rand(96, 1)  # ragged for blocksize 64
    # three graphs only (compiling costs seconds): the select path (<= 32 codes), arithmetic int,
    # and the bit-pattern table for large code books
    cases = [QuantSpec(4, "nf"), QuantSpec(8, "int", blocksize=None), QuantSpec(8, "dynamic", centered=True)]
    from kscale.quant import _fast

    for engine in ("numba", "inductor"):  # float32 takes numba where it is installed
        with pytest.MonkeyPatch.context() as mp:
            if engine == "inductor":
                mp.setitem(_fast._state, "numba", "off in this test")
            for spec in cases:
                eager = fake_quantize(w, spec, kernel="eager")
                fused = fake_quantize(w, spec, kernel="compiled")
                assert torch.equal(eager, fused), (engine, spec)


@pytest.mark.parametrize("dtype", ["dynamic", "float", "nf", "quantile"])
def test_large_codebook_table_search_equals_bucketize_exactly(dtype):
    """8-bit code books (255 midpoints) use a bit-pattern table + corrections instead of a binary
    search; it must count midpoints strictly below x exactly like bucketize, ties included."""
    from kscale.quant import _fast

    torch.manual_seed(1)
    w = torch.randn(64, 64)
    code = codebook(QuantSpec(8, dtype), w if dtype == "quantile" else None)
    mids = _fast.midpoints(code)
    assert mids.numel() > _fast.LUT_MIN_MIDPOINTS
    up, down = torch.tensor(2.0), torch.tensor(-2.0)
    x = torch.cat([torch.rand(200_000) * 2 - 1, torch.randn(1000) * 1e-4, mids,
                   torch.nextafter(mids, up), torch.nextafter(mids, down),
                   torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-38, -1e-38, 3.0, -3.0])])
    assert torch.equal(_fast.bucket_index(x, mids), torch.bucketize(x, mids))
