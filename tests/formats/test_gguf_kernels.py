"""kscale's GGUF kernels against llama.cpp's reference: ggml_quantize_chunk's bytes, gguf's values.

For every type, on seeded Gaussian, heavy-tailed (Student-t, 3 dof), bf16-valued, all-zero and
single-outlier rows, with and without an importance matrix where ggml reads one: the packed bytes
equal ``ggml_quantize_chunk``'s byte for byte, and dequantizing them equals
``gguf.quants.dequantize`` bit for bit (so ``fake_quantize_gguf`` is what llama.cpp would compute
from the same file).
"""
from __future__ import annotations

import pytest
import torch

from kscale.quant.gguf import GGUF_TYPES, dequantize_gguf, fake_quantize_gguf, quantize_gguf
from kscale.quant.gguf.ggml_reference import ggml_available, ggml_quantize

gguf = pytest.importorskip("gguf", reason="the GGUF reference tests need the dev dependency gguf")
pytestmark = pytest.mark.skipif(not ggml_available(), reason="needs the dev dependency libggml-python")

ALL = list(GGUF_TYPES)
IMATRIX = [name for name in ALL if GGUF_TYPES[name].takes_imatrix]


def matrix(kind: str, n: int, rows: int = 16, seed: int = 0) -> torch.Tensor:
    """Seeded test rows at weight-like magnitudes (σ ≈ 0.02)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(rows, n, generator=g) * 0.02
    if kind == "student_t3":
        z, chi2 = torch.randn(rows, n, generator=g), torch.distributions.Chi2(3.0)
        torch.manual_seed(seed)
        return z / (chi2.sample((rows, n)) / 3).sqrt() * 0.02
    if kind == "bf16":
        return (torch.randn(rows, n, generator=g) * 0.02).to(torch.bfloat16).to(torch.float32)
    if kind == "zero_and_outlier":
        w = torch.randn(rows, n, generator=g) * 0.02
        w[0] = 0.0
        w[1] = -0.0
        w[2] = 0.0
        w[2, 7] = 3.5  # one value in an otherwise empty row
        w[3, n // 2] = -40.0  # a single outlier among Gaussian values
        w[4, :32] = 0.0  # an all-zero block within a normal row
        return w
    raise ValueError(kind)


KINDS = ["gaussian", "student_t3", "bf16", "zero_and_outlier"]


def imatrix_for(n: int, seed: int = 1) -> torch.Tensor:
    """Mean squared activations: positive, spread over orders of magnitude, a few zeros."""
    g = torch.Generator().manual_seed(seed)
    im = torch.rand(n, generator=g) ** 4 * 10
    im[::37] = 0.0
    return im


def gguf_values(data: torch.Tensor, ggml_type: int, shape) -> torch.Tensor:
    out = gguf.quants.dequantize(data.numpy(), gguf.GGMLQuantizationType(ggml_type))
    return torch.from_numpy(out).reshape(shape)


def assert_bytes_equal(got: torch.Tensor, ref: torch.Tensor, name: str, block_bytes: int) -> None:
    assert got.dtype == torch.uint8 and got.shape == ref.shape
    bad = (got != ref).view(got.shape[0], -1, block_bytes).any(-1)
    assert not bad.any(), f"{name}: {int(bad.sum())} of {bad.numel()} blocks differ from ggml (first {bad.nonzero()[:3].tolist()})"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ALL)
def test_bytes_equal_ggml_without_imatrix(name, kind):
    t = GGUF_TYPES[name]
    w = matrix(kind, 512)
    ref = ggml_quantize(w, t.ggml_type)
    assert_bytes_equal(quantize_gguf(w, name), ref, name, t.block_bytes)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", IMATRIX)
def test_bytes_equal_ggml_with_imatrix(name, kind):
    t = GGUF_TYPES[name]
    w = matrix(kind, 512, rows=8, seed=2)
    im = imatrix_for(512)
    ref = ggml_quantize(w, t.ggml_type, im)
    assert_bytes_equal(quantize_gguf(w, name, im), ref, name, t.block_bytes)
    # the imatrix changes the choice: a kernel that ignored it would not pass both tests
    if kind == "gaussian":
        assert not torch.equal(ref, ggml_quantize(w, t.ggml_type))


@pytest.mark.parametrize("name", ALL)
def test_values_equal_gguf_dequantize(name):
    t = GGUF_TYPES[name]
    w = torch.cat([matrix(kind, 256, rows=6, seed=3) for kind in KINDS])
    data = ggml_quantize(w, t.ggml_type)
    ref = gguf_values(data, t.ggml_type, w.shape)
    assert torch.equal(dequantize_gguf(data, name, 256).view(torch.int32), ref.view(torch.int32))
    fake = fake_quantize_gguf(w, name)
    assert torch.equal(fake.view(torch.int32), ref.view(torch.int32))
    # and the error is what the type's bits allow (a broken but self-consistent pair would not be)
    gauss = w[:6]
    rel = ((fake[:6] - gauss).norm() / gauss.norm()).item()
    assert rel < 2.0 ** (2 - t.bits_per_weight)


@pytest.mark.parametrize("name", ALL)
def test_torch_engine_gives_ggml_bytes_too(name, monkeypatch):
    """The numba searches and fused paths are a speed-up of the torch kernels (which also run on
    GPUs and where numba is missing): the pure-torch engine must give the same bytes."""
    from kscale.quant.gguf import search

    t = GGUF_TYPES[name]
    w = torch.cat([matrix("zero_and_outlier", 256, rows=6, seed=6), matrix("student_t3", 256, rows=4, seed=7)])
    im = imatrix_for(256) if t.takes_imatrix else None
    monkeypatch.setattr(search, "ENGINE", "torch")
    ref = ggml_quantize(w, t.ggml_type)
    assert_bytes_equal(quantize_gguf(w, name), ref, name, t.block_bytes)
    values = dequantize_gguf(ref, name, w.shape[1])
    assert torch.equal(values.view(torch.int32), gguf_values(ref, t.ggml_type, w.shape).view(torch.int32))
    if im is not None:
        assert_bytes_equal(quantize_gguf(w, name, im), ggml_quantize(w, t.ggml_type, im), name, t.block_bytes)


def test_every_llama_cpp_type_of_the_issue_is_implemented():
    from kscale.quant.gguf.kernels import KERNELS

    expected = "q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k iq4_nl iq4_xs".split()
    assert list(GGUF_TYPES) == expected and sorted(KERNELS.names()) == sorted(expected)
    assert [name for name in expected if not GGUF_TYPES[name].takes_imatrix] == ["q8_0"]


def test_sizes_match_ggml_tables():
    for name, t in GGUF_TYPES.items():
        qtype = gguf.GGMLQuantizationType[name.upper()]
        assert int(qtype) == t.ggml_type
        assert gguf.GGML_QUANT_SIZES[qtype] == (t.block_values, t.block_bytes)


def test_bad_input_raises_one_clear_error():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_gguf(torch.zeros(2, 96), "q4_k")
    with pytest.raises(ValueError, match="unknown GGUF type 'q4_z'"):
        quantize_gguf(torch.zeros(2, 64), "q4_z")
    with pytest.raises(ValueError, match="2-D"):
        quantize_gguf(torch.zeros(64), "q8_0")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_gguf(torch.full((1, 32), float("nan")), "q8_0")
    with pytest.raises(ValueError, match="one value per column"):
        quantize_gguf(torch.zeros(2, 64), "q4_0", imatrix=torch.ones(32))
    with pytest.raises(ValueError, match="takes no importance matrix"):
        quantize_gguf(torch.zeros(2, 64), "q8_0", imatrix=torch.ones(64))
    with pytest.raises(ValueError, match=r"uint8 \[rows, 34\]"):
        dequantize_gguf(torch.zeros(2, 30, dtype=torch.uint8), "q8_0", 32)


def test_large_matrix_chunks_give_the_same_bytes(monkeypatch):
    """Row chunking (memory bound) must not change a byte."""
    from kscale.quant.gguf import kernels

    w, im = matrix("student_t3", 256, rows=12, seed=5), imatrix_for(256)
    whole = quantize_gguf(w, "q4_0", im)
    monkeypatch.setattr(kernels, "CHUNK_VALUES", 256 * 5)
    assert torch.equal(quantize_gguf(w, "q4_0", im), whole)
    assert torch.equal(whole, ggml_quantize(w, GGUF_TYPES["q4_0"].ggml_type, im))
