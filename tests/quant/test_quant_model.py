"""Model-level quantization: ledgers of tiny GPT-2 / OPT against hand counts, snapshot/restore."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM
from transformers.pytorch_utils import Conv1D

from kscale.quant import (
    METHODS,
    ModuleFilter,
    QuantSpec,
    WeightSnapshot,
    apply_method,
    ledger_for,
    quantizable_modules,
    quantize_model,
    set_weight_matrix,
    weight_matrix,
)

D, L, V, P, F = 64, 2, 100, 32, 256


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_positions=P, n_embd=D, n_layer=L, n_head=4, n_inner=F)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def opt():
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=V, hidden_size=D, num_hidden_layers=L, ffn_dim=128, num_attention_heads=4,
                    max_position_embeddings=P, word_embed_proj_dim=D)
    return OPTForCausalLM(cfg).eval()


# hand counts -------------------------------------------------------------------------------
GPT2_MATS = [(3 * D, D), (D, D), (F, D), (D, F)]  # c_attn, attn.c_proj, c_fc, mlp.c_proj as [out, in]
GPT2_QUANT = L * sum(o * i for o, i in GPT2_MATS)
GPT2_PARAMS = V * D + P * D + L * (2 * D + 3 * D * D + 3 * D + D * D + D + 2 * D + D * F + F + F * D + D) + 2 * D
OPT_MATS = [(D, D)] * 4 + [(128, D), (D, 128)]
OPT_QUANT = L * sum(o * i for o, i in OPT_MATS)
OPT_PARAMS = V * D + (P + 2) * D + L * (4 * (D * D + D) + 2 * D + 128 * D + 128 + 128 * D + D + 2 * D) + 2 * D


def test_gpt2_ledger_hand_count(gpt2):
    assert sum(isinstance(m, Conv1D) for m in quantizable_modules(gpt2).values()) == 4 * L
    led = ledger_for(gpt2, QuantSpec(4, "nf", blocksize=64))
    assert led.n_params == GPT2_PARAMS  # wte and the tied lm_head counted once
    assert led.n_quantized == GPT2_QUANT
    assert led.payload_bits == 4 * GPT2_QUANT and led.constant_bits == 16 * GPT2_QUANT // 64
    assert led.bits_per_param == 4.25
    assert led.total_bits == GPT2_QUANT * 4.25 + 16 * (GPT2_PARAMS - GPT2_QUANT)
    # ragged blocks (B=100) and per-row constants, centered doubles the constants
    led = ledger_for(gpt2, QuantSpec(3, "int", blocksize=100, centered=True, scale_bits=32))
    assert led.constant_bits == L * sum(math.ceil(o * i / 100) for o, i in GPT2_MATS) * 2 * 32
    led = ledger_for(gpt2, QuantSpec(8, "float", blocksize=None))
    assert led.constant_bits == L * sum(o for o, _ in GPT2_MATS) * 16  # one per output row
    led = ledger_for(gpt2, QuantSpec(4, "quantile"))
    assert led.constant_bits == 16 * GPT2_QUANT // 64 + 4 * L * 16 * 16
    row = ledger_for(gpt2, QuantSpec(16)).to_row()
    assert row["total_bits"] == 16 * GPT2_PARAMS and row["bits_per_param"] == 16.0


def test_opt_ledger_hand_count(opt):
    led = ledger_for(opt, QuantSpec(4, "int", blocksize=64, scale_bits=32))
    assert led.n_params == OPT_PARAMS
    assert led.n_quantized == OPT_QUANT and len(led.rows) == 6 * L
    assert led.bits_per_param == 4.5
    assert led.total_bits == OPT_QUANT * 4.5 + 16 * (OPT_PARAMS - OPT_QUANT)
    # lm_head included on request: tied to embed_tokens, the shared tensor is counted once
    led = ledger_for(opt, QuantSpec(4), ModuleFilter(exclude=()))
    assert led.n_quantized == OPT_QUANT + V * D and led.n_params == OPT_PARAMS
    assert led.total_bits == (OPT_QUANT + V * D) * 4.25 + 16 * (OPT_PARAMS - OPT_QUANT - V * D)


def test_conv1d_is_quantized_along_output_rows(gpt2):
    model = gpt2
    with WeightSnapshot(model):
        spec = QuantSpec(4, "int", blocksize=None)
        quantize_model(model, spec, progress=False)
        W = weight_matrix(model.transformer.h[0].attn.c_attn)  # [3D, D]
        assert W.shape == (3 * D, D)
        levels = (W / W.abs().amax(1, keepdim=True).half().float()) * 7
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert W.abs().amax(1).ne(0).all()


def test_quantize_model_matches_ledger_and_fake_quantize(opt):
    model = opt
    spec = QuantSpec(3, "float", blocksize=64)
    name, mod = next(iter(quantizable_modules(model).items()))
    before = weight_matrix(mod).detach().clone()
    with WeightSnapshot(model):
        led = quantize_model(model, spec, progress=False)
        assert led == ledger_for(model, spec)
        from kscale.quant import fake_quantize

        assert torch.equal(weight_matrix(mod), fake_quantize(before, spec))
        assert len(torch.unique(weight_matrix(mod))) > 1
        assert torch.equal(model.lm_head.weight, model.model.decoder.embed_tokens.weight)
    assert torch.equal(weight_matrix(mod), before)


def test_snapshot_restore_bitwise_after_several_cells(gpt2):
    model = gpt2
    state = {k: v.clone() for k, v in model.state_dict().items()}
    snap = WeightSnapshot(model)
    assert snap.n_tensors == 4 * L and snap.nbytes == GPT2_QUANT * 4
    for spec in [QuantSpec(3, "int"), QuantSpec(4, "nf", centered=True), QuantSpec(8, "dynamic"), QuantSpec(4, "quantile")]:
        apply_method("rtn", model, spec, options={"progress": False})
        snap.restore()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]) and v.dtype == state[k].dtype, k


def test_keep_columns_stay_16bit_and_are_counted(opt):
    model = opt
    name = "model.decoder.layers.0.fc1"
    mod = dict(model.named_modules())[name]
    keep = torch.zeros(D, dtype=torch.bool)
    keep[[3, 17, 40]] = True
    spec = QuantSpec(4, "int", blocksize=64)
    before = weight_matrix(mod).detach().clone()
    with WeightSnapshot(model):
        led = quantize_model(model, spec, keep_columns={name: keep}, progress=False)
        W = weight_matrix(mod)
        assert torch.equal(W[:, keep], before[:, keep])
        from kscale.quant import fake_quantize

        assert torch.equal(W[:, ~keep], fake_quantize(before[:, ~keep].contiguous(), spec))
    row = {r.name: r for r in led.rows}[name]
    assert row.other_bits == 128 * 3 * 16 and row.payload_bits == 128 * 61 * 4
    assert row.constant_bits == math.ceil(128 * 61 / 64) * 16
    with pytest.raises(ValueError, match="bool tensor of shape"):
        ledger_for(model, spec, keep_columns={name: torch.zeros(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not quantized"):
        ledger_for(model, spec, keep_columns={"lm_head": keep})


def test_methods_registry_and_options(gpt2):
    assert "rtn" in METHODS
    with pytest.raises(ValueError, match="Did you mean 'rtn'"):
        apply_method("rtm", gpt2, QuantSpec(4))
    with pytest.raises(ValueError, match="method rtn: unknown option"):
        apply_method("rtn", gpt2, QuantSpec(4), options={"damp": 0.1})
    led = apply_method("rtn", gpt2, QuantSpec(16))
    assert led.bits_per_param == 16.0


def test_set_weight_matrix_checks_shape(gpt2):
    mod = gpt2.transformer.h[0].mlp.c_fc
    with pytest.raises(ValueError, match=r"\(256, 64\)"):
        set_weight_matrix(mod, torch.zeros(64, 256))
    W = weight_matrix(mod).detach().clone()
    set_weight_matrix(mod, W)
    assert torch.equal(mod.weight, W.t())
