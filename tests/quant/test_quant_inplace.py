"""In-place fake quantization (issue 13 §2) and the compile-time record (§3).

The reference here is written from the recipe (Dettmers & Zettlemoyer 2022 §2.2-2.3), with
``torch.bucketize`` for the nearest code, independently of kscale's kernels (which use select
chains, arithmetic and bit-pattern tables instead).
"""
from __future__ import annotations

import itertools

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

import kscale.quant.core as core
from kscale.quant import (
    ModuleFilter,
    QuantSpec,
    WeightSnapshot,
    codebook,
    compile_stats,
    compiled_kernel_available,
    fake_quantize,
    fake_quantize_,
    quantizable_modules,
    quantize_matrix,
    quantize_matrix_,
    quantize_model,
    take_compile_seconds,
    weight_matrix,
)


def reference(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Block-wise absmax (or range) quantization by the formula, nearest code by bucketize."""
    code = codebook(spec, w).float()
    numel = w.numel()
    bs = spec.blocksize or numel // w.shape[0]
    flat = w.detach().float().reshape(-1)
    pad = -numel % bs
    x = torch.cat([flat, flat[-1:].expand(pad)]).view(-1, bs)

    def stored(v):
        return v.clamp(-65504, 65504).half().float() if spec.scale_bits == 16 else v

    if spec.centered:
        hi, lo = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
        offset, scale = stored((hi + lo) / 2), stored((hi - lo) / 2)
    else:
        offset, scale = torch.zeros(1), stored(x.abs().amax(1, keepdim=True))
    xn = (x - offset) / torch.where(scale == 0, torch.ones_like(scale), scale)
    idx = torch.bucketize(xn, (code[1:] + code[:-1]) / 2)
    out = code[idx] * scale
    if spec.centered:
        out = out + offset
    return out.reshape(-1)[:numel].to(w.dtype).view(w.shape)


DTYPES = ["int", "float", "dynamic", "quantile", "nf"]
SHAPE = (13, 61)  # 793 values: ragged for B=64 (12 full blocks + 25) and for B=100


@pytest.mark.parametrize("dtype,bits", list(itertools.product(DTYPES, [3, 4, 8])))
def test_in_place_equals_reference_every_type(dtype, bits):
    torch.manual_seed(bits)
    w0 = torch.randn(SHAPE) * torch.rand(SHAPE[0], 1) * 3
    settings = [(64, False, 16, torch.float32), (100, True, 32, torch.float16),
                (None, False, 32, torch.bfloat16), (64, True, 16, torch.float32)]
    for bs, centered, sbits, wdtype in settings:
        spec = QuantSpec(bits, dtype, blocksize=bs, centered=centered, scale_bits=sbits)
        w = w0.to(wdtype)
        ref = reference(w, spec)
        x = w.clone()
        ptr = x.data_ptr()
        assert fake_quantize_(x, spec, kernel="eager") is x
        assert x.data_ptr() == ptr and x.dtype == wdtype
        assert torch.equal(x, ref), spec
        assert not torch.equal(x, w)  # it did quantize
        out = fake_quantize(w, spec)  # out of place: same values, input untouched
        assert torch.equal(out, ref) and torch.equal(w, w0.to(wdtype))


def test_baseline_leaves_storage_alone():
    w = torch.randn(4, 64)
    before = w.clone()
    assert fake_quantize_(w, QuantSpec(16)) is w and torch.equal(w, before)


@pytest.mark.parametrize("bs", [64, 100, None])
def test_transposed_view_is_written_through_chunks(monkeypatch, bs):
    """Conv1D stores [in, out]; its [out, in] matrix is a transposed view. Chunks of whole blocks
    (forced small here) must give exactly the contiguous result and write into the storage."""
    monkeypatch.setattr(core, "STRIDED_CHUNK_NUMEL", 500)
    torch.manual_seed(0)
    storage = torch.randn(130, 96)  # [in, out]
    W = storage.t()  # [96, 130], not contiguous
    spec = QuantSpec(4, "nf", blocksize=bs, centered=bs == 100)
    ref = reference(W.contiguous(), spec)
    ptr = storage.data_ptr()
    fake_quantize_(W, spec, kernel="eager")
    assert storage.data_ptr() == ptr
    assert torch.equal(W, ref) and torch.equal(storage, ref.t())


def test_quantize_matrix_keep_columns_in_place():
    torch.manual_seed(0)
    W = torch.randn(32, 80)
    keep = torch.zeros(80, dtype=torch.bool)
    keep[[0, 7, 79]] = True
    spec = QuantSpec(3, "int")
    before = W.clone()
    copy = quantize_matrix(W, spec, keep)
    assert torch.equal(W, before)  # out-of-place variant leaves W alone
    assert quantize_matrix_(W, spec, keep) is W
    assert torch.equal(W, copy)
    assert torch.equal(W[:, keep], before[:, keep])
    assert torch.equal(W[:, ~keep], reference(before[:, ~keep].contiguous(), spec))


def _gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4, n_inner=192)
    return GPT2LMHeadModel(cfg).eval()


def _opt():
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                    num_attention_heads=4, max_position_embeddings=32, word_embed_proj_dim=64)
    return OPTForCausalLM(cfg).eval()


@pytest.mark.parametrize("build,wdtype", [(_gpt2, torch.float32), (_opt, torch.float16)])
def test_quantize_model_writes_into_weights_and_snapshot_restores_bitwise(build, wdtype):
    model = build().to(wdtype)
    filt = ModuleFilter(exclude=())  # lm_head too: tied to the embedding, quantized once
    mods = quantizable_modules(model, filt)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ptrs = {n: m.weight.data_ptr() for n, m in mods.items()}
    expected = {n: reference(weight_matrix(m).detach(), QuantSpec(4, "nf", blocksize=100))
                for n, m in mods.items()}
    snap = WeightSnapshot(model, filt)
    for spec in [QuantSpec(4, "nf", blocksize=100), QuantSpec(8, "dynamic", centered=True)]:
        quantize_model(model, spec, module_filter=filt, progress=False)
        assert {n: m.weight.data_ptr() for n, m in mods.items()} == ptrs  # same storage
        if spec.bits == 4:
            for n, m in mods.items():
                assert torch.equal(weight_matrix(m), expected[n]), n
        snap.restore()
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]) and v.dtype == state[k].dtype, k
    tied = [m for n, m in mods.items() if "lm_head" in n]
    if tied and isinstance(model, OPTForCausalLM):
        assert tied[0].weight is model.model.decoder.embed_tokens.weight


@pytest.mark.slow
def test_compiled_in_place_bit_identical():
    """Fused kernels written back into the input: one graph per strategy (int arithmetic,
    select chain, single-correction table), with fp16/bf16 weights, centered, fp32 constants,
    ragged blocks, and a transposed view through chunks."""
    if not compiled_kernel_available():
        pytest.skip("torch.compile unavailable here (no C++ compiler?)")
    torch.manual_seed(0)
    w = torch.randn(96, 130) * torch.rand(96, 1)  # ragged for blocksize 64
    cases = [(QuantSpec(4, "int", centered=True, scale_bits=32), torch.float16),
             (QuantSpec(3, "int"), torch.float32),
             (QuantSpec(4, "float"), torch.bfloat16),
             (QuantSpec(8, "nf", blocksize=None), torch.float32),
             (QuantSpec(8, "quantile"), torch.float32)]
    for spec, wdtype in cases:
        x = w.to(wdtype)
        ref = reference(x, spec)
        y = x.clone()
        fake_quantize_(y, spec, kernel="compiled")
        assert torch.equal(y, ref), spec
        t = x.t().contiguous().t()  # same values, transposed storage
        fake_quantize_(t, spec, kernel="compiled")
        assert torch.equal(t, ref), spec
    # the general table graph (a code book with a crowded bucket; none of the built-in ones
    # has one): an extra correction pass is exact, so steps=2 must still equal the reference
    from kscale.quant import _fast

    spec = QuantSpec(8, "dynamic", centered=True)
    code = codebook(spec).float()
    table, padded, _ = _fast._lut_for(_fast.midpoints(code))
    x = w.half().reshape(-1)[:96 * 128].clone().view(-1, 64)
    ref = reference(x, spec)
    with _fast._compile_config(), torch.no_grad():
        _fast._get_compiled("lut")(x, table, padded, code, True, 16, 2)
    assert torch.equal(x, ref)


@pytest.mark.slow
def test_compile_seconds_are_recorded_once_per_graph(monkeypatch):
    if not compiled_kernel_available():
        pytest.skip("torch.compile unavailable here (no C++ compiler?)")
    from kscale.quant import _fast

    monkeypatch.setitem(_fast._state, "numba", "off in this test")  # the inductor graphs
    torch._dynamo.reset()  # whatever compiled before, the next call must compile again
    take_compile_seconds()
    before = compile_stats()
    x = torch.randn(64, 64)
    fake_quantize_(x, QuantSpec(4, "nf"), kernel="compiled")
    first = take_compile_seconds()
    after = compile_stats()
    assert first > 0 and after["compiles"] == before["compiles"] + 1
    assert after["compile_s"] == pytest.approx(before["compile_s"] + first)
    fake_quantize_(torch.randn(128, 64), QuantSpec(4, "nf"), kernel="compiled")  # dynamic shape
    fake_quantize_(x, QuantSpec(4, "nf"), kernel="compiled")
    fake_quantize_(torch.randn(300, 300), QuantSpec(8, "dynamic"), kernel="eager")
    assert take_compile_seconds() == 0.0
    assert compile_stats()["compiles"] == after["compiles"]
