"""Issue 18 §1-3: storage formats as registered objects -- entry points, exact costs that equal
the packed bytes, the ledger asking the format, per-format grid expansion, GGUF/MX wrappers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from kscale.quant import FORMATS, QuantSpec, fake_quantize, format_of, ledger_for, pack, quantize
from kscale.quant.core import fake_quantize as kernel_fake_quantize
from kscale.quant.formats import StorageFormat, TensorCost, register_format
from kscale.quant.formats.bitpack import pack_bits, unpack_bits
from kscale.quant.ledger import tensor_row
from kscale.sweep.grid import expand_cells


def _w(shape=(48, 256), seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_name_with_options_equals_the_quantspec_kernel():
    w = _w()
    got = fake_quantize(w, "blockwise", bits=4, dtype="nf", blocksize=64)
    assert torch.equal(got, kernel_fake_quantize(w, QuantSpec(4, "nf", 64)))
    assert torch.equal(fake_quantize(w, QuantSpec(3, "float", 128)), kernel_fake_quantize(w, QuantSpec(3, "float", 128)))
    assert format_of(QuantSpec(4)).name == "blockwise" and "blockwise" in FORMATS.names()


def test_bad_names_and_options_fail_with_one_clear_line():
    with pytest.raises(ValueError, match="unknown format 'blokwise'. Did you mean 'blockwise'"):
        fake_quantize(_w(), "blokwise", bits=4)
    with pytest.raises(ValueError, match="format blockwise takes no option 'blocksise'.*'blocksize'"):
        fake_quantize(_w(), "blockwise", bits=4, blocksise=64)
    with pytest.raises(ValueError, match="only go with a format name"):
        fake_quantize(_w(), QuantSpec(4), bits=3)


@pytest.mark.parametrize("spec", [QuantSpec(4), QuantSpec(3, "nf", 64), QuantSpec(5, "float", 32, centered=True),
                                  QuantSpec(6, "quantile", 128, scale_bits=32), QuantSpec(8, "dynamic", None)])
def test_blockwise_pack_holds_exactly_the_ledgered_bits_and_decodes_to_fake_quantize(spec):
    """Independent decode of the packed bytes (k-bit indices, then fp16/fp32 scales, offsets,
    codebook) reproduces fake_quantize, and 8 x bytes = the format's exact cost."""
    w = _w()
    data = pack(w, spec)
    cost = format_of(spec).tensor_cost(tuple(w.shape), spec)
    assert 8 * len(data) == cost.total_bits  # numel x k is a whole number of bytes here
    n, k = w.numel(), spec.bits
    idx = unpack_bits(data[: n * k // 8], k, n)
    q = quantize(w, spec)
    n_blocks = q.scale.numel()
    sdt = np.float16 if spec.scale_bits == 16 else np.float32
    off = n * k // 8
    scale = np.frombuffer(data, sdt, n_blocks, off).astype(np.float32)
    off += n_blocks * np.dtype(sdt).itemsize
    offset = None
    if spec.centered:
        offset = np.frombuffer(data, sdt, n_blocks, off).astype(np.float32)
        off += n_blocks * np.dtype(sdt).itemsize
    code = q.code.numpy() if spec.dtype != "quantile" else np.frombuffer(data, np.float16, 2**k, off).astype(np.float32)
    bs = q.layout.blocksize
    values = code[idx.numpy()] * np.repeat(scale, bs)[:n]
    if offset is not None:
        values = values + np.repeat(offset, bs)[:n]
    assert torch.equal(torch.from_numpy(values).view(w.shape), fake_quantize(w, spec))


def test_bitpack_is_lsb_first_and_round_trips():
    assert pack_bits(torch.tensor([1, 2, 3]), 3) == bytes([0b11010001, 0b0])  # 001 010 011 from bit 0
    idx = torch.randint(0, 32, (1000,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(unpack_bits(pack_bits(idx, 5), 5, 1000), idx)


def test_ledger_asks_the_format():
    # the paper's 4 + 16/64 = 4.25 bits per weight; fp32 constants 4.5 (Dettmers & Zettlemoyer §5.2)
    assert tensor_row("w", (4096, 4096), QuantSpec(4)).total_bits == 4096 * 4096 * 4.25
    assert tensor_row("w", (4096, 4096), QuantSpec(4, scale_bits=32)).total_bits == 4096 * 4096 * 4.5
    model = torch.nn.Sequential(torch.nn.Linear(256, 64, bias=False))
    assert ledger_for(model, QuantSpec(4), None).payload_bits == 64 * 256 * 4


@dataclass(frozen=True)
class SignConfig:
    """A one-file format for the test: sign times the tensor's mean magnitude (1 bit + fp32)."""

    scaled: bool = True
    format = "test_sign"
    is_baseline = False
    label = "sign"

    def to_row(self):
        return {"format": "test_sign", "bits": 1, "scaled": self.scaled}


class SignFormat(StorageFormat):
    name = "test_sign"
    config_class = SignConfig
    axes = ("scaled",)

    def fake_quantize_(self, w, config, **_):
        w.copy_(torch.sign(w) * (w.abs().mean() if config.scaled else 1.0))
        return w

    def tensor_cost(self, shape, config, n_kept_columns=0):
        return TensorCost(shape[0] * shape[1], 32)


@pytest.fixture
def sign_format():
    register_format(SignFormat())
    yield FORMATS.get("test_sign")
    FORMATS._items.pop("test_sign")


def test_a_new_format_is_one_class_and_the_grid_expands_per_format(sign_format):
    w = _w()
    assert torch.equal(fake_quantize(w, "test_sign", scaled=False), torch.sign(w))
    cells = expand_cells({"format": ["blockwise", "test_sign"], "bits": [4, 16], "dtype": ["int", "nf"],
                          "scaled": [True, False], "method": "rtn"})
    labels = [c.label for c in cells]
    assert labels[0] == "16bit-baseline" and len(cells) == 1 + 2 + 2
    sign_rows = [c.identity() for c in cells if c.quant.format == "test_sign"]
    assert [r["scaled"] for r in sign_rows] == [True, False]
    assert all("dtype" not in r and "blocksize" not in r for r in sign_rows)  # no column that did not apply
    assert all("scaled" not in c.identity() for c in cells if c.quant.format == "blockwise")
    with pytest.raises(ValueError, match="format test_sign runs with method=rtn"):
        expand_cells({"format": "test_sign", "method": "gptq"})
    with pytest.raises(ValueError, match="grid axis 'scaled' is taken by none of the formats blockwise"):
        expand_cells({"format": "blockwise", "bits": 4, "scaled": True})


GGUF_EXPECTED_BPW = {"q4_0": 4.5, "q8_0": 8.5, "q4_k": 4.5, "q6_k": 6.5625, "q2_k": 2.625}


@pytest.mark.parametrize("name", sorted(GGUF_EXPECTED_BPW))
def test_gguf_types_are_formats_with_exact_block_cost(name):
    """bits per weight from ggml-common.h's block structs (q4_K: 144 bytes / 256 values)."""
    gguf = pytest.importorskip("kscale.quant.gguf")
    w = _w((8, 512))
    cfg = FORMATS.get(name).configure()
    cost = FORMATS.get(name).tensor_cost(tuple(w.shape), cfg)
    assert cost.total_bits == w.numel() * GGUF_EXPECTED_BPW[name]
    data = pack(w, name)
    assert 8 * len(data) == cost.total_bits
    assert data == bytes(gguf.quantize_gguf(w, name).numpy().tobytes())
    assert torch.equal(fake_quantize(w, name), gguf.fake_quantize_gguf(w, name))
    assert cfg.to_row()["bits"] == int(name[1])  # nominal bits; bits_per_param is the exact one


def test_gguf_row_length_falls_back_as_llama_cpp_does():
    pytest.importorskip("kscale.quant.gguf")
    from kscale.quant.formats.gguf import stored_type

    assert stored_type("q4_k", 4096) == "q4_k"
    assert stored_type("q4_k", 4096 + 32) == "q5_0"  # not a multiple of 256, a multiple of 32
    assert stored_type("q6_k", 96) == "q8_0"
    assert stored_type("q4_0", 48) == "f16"
    cost = FORMATS.get("q4_0").tensor_cost((3, 48), FORMATS.get("q4_0").configure())
    assert (cost.payload_bits, cost.other_bits) == (0, 3 * 48 * 16)


def test_mx_types_are_formats_with_the_kernel_cost():
    mx = pytest.importorskip("kscale.quant.mx")
    w = _w((16, 256))
    for name, bpw in (("mxfp4", 4.25), ("mxint8", 8.25)):
        cost = FORMATS.get(name).tensor_cost(tuple(w.shape), FORMATS.get(name).configure())
        assert cost.total_bits == w.numel() * bpw == mx.storage_bits(tuple(w.shape), name)
        assert 8 * len(pack(w, name)) == cost.total_bits
        assert torch.equal(fake_quantize(w, name), mx.fake_quantize_mx(w, name))


class _TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(10, 32)
        self.proj = torch.nn.Linear(32, 64)

    def forward(self, ids):
        return self.proj(self.emb(ids))


def test_importance_matrix_is_the_mean_square_input_per_column_and_changes_gguf_rounding():
    """llama.cpp's imatrix: per input column, sum of x^2 over tokens / number of tokens."""
    pytest.importorskip("kscale.quant.gguf")
    from kscale.quant import METHODS, quantize_model
    from kscale.quant.filter import ModuleFilter
    from kscale.quant.imatrix import importance_matrices

    model = _TinyLM()
    ids = torch.randint(0, 10, (5, 7), generator=torch.Generator().manual_seed(2))
    im = importance_matrices(model, ids, ModuleFilter(), batch_size=2)
    x = model.emb(ids).detach().reshape(-1, 32)
    assert torch.allclose(im["proj"], x.pow(2).mean(dim=0), rtol=1e-6)
    spec = FORMATS.get("q4_0").configure(imatrix=True)
    w0 = model.proj.weight.detach().clone()
    METHODS.get("rtn").quantize(model, spec, None, module_filter=ModuleFilter(), calibration=ids)
    from kscale.quant.gguf import fake_quantize_gguf

    assert torch.equal(model.proj.weight, fake_quantize_gguf(w0, "q4_0", im["proj"]))
    assert not torch.equal(model.proj.weight, fake_quantize_gguf(w0, "q4_0"))
    with pytest.raises(ValueError, match="imatrix=true needs calibration windows"):
        METHODS.get("rtn").quantize(model, spec, None, module_filter=ModuleFilter())
    with pytest.raises(ValueError, match="q4_0 with imatrix=true needs the importance matrix"):
        quantize_model(model, spec, progress=False)


@pytest.mark.parametrize("name", ["q4_k", "mxfp4", "q8_0"])
def test_kernel_formats_quantize_in_place_and_the_snapshot_restores_bitwise(name):
    pytest.importorskip("kscale.quant.gguf")
    pytest.importorskip("kscale.quant.mx")
    from kscale.quant import METHODS, WeightSnapshot

    model = torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.Linear(64, 256))  # 64: q4_k -> q5_0
    before = [p.detach().clone() for p in model.parameters()]
    spec = FORMATS.get(name).configure()
    with WeightSnapshot(model):
        ledger = METHODS.get("rtn").quantize(model, spec, None)
        assert torch.equal(model[0].weight, fake_quantize(before[0], name))
        assert not torch.equal(model[0].weight, before[0])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    expected = sum(FORMATS.get(name).tensor_cost(tuple(m.weight.shape), spec).total_bits for m in model)
    assert ledger.total_bits == expected + 16 * (64 + 256)  # biases at 16 bits
