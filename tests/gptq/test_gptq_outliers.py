"""Proxy quantization (Dettmers & Zettlemoyer 2022 §3): which columns stay in 16 bit, that they
stay bit-identical under rtn and gptq, and that the ledger charges exactly p·(16 − k) for them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import kscale.quant.gptq  # noqa: F401  (registers the gptq method)
from kscale.quant import QuantSpec, apply_method, fake_quantize, quantizable_modules, weight_matrix
from kscale.quant.outliers import consumer_name, keep_columns_for, n_outliers, outlier_keep_columns, outlier_units

OPT_PAIRS = (
    ("model.decoder.layers.*.self_attn.out_proj", "model.decoder.layers.*.fc1"),
    ("model.decoder.layers.*.fc1", "model.decoder.layers.*.fc2"),
)


def tiny_opt(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.OPTConfig(
        num_hidden_layers=2, hidden_size=64, ffn_dim=128, num_attention_heads=4, vocab_size=96,
        max_position_embeddings=64, word_embed_proj_dim=64, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )
    model = transformers.OPTForCausalLM(cfg).eval()
    with torch.no_grad():  # give a few units a much larger weight spread (outlier producers)
        for layer in model.model.decoder.layers:
            layer.self_attn.out_proj.weight[[3, 17, 40]] *= torch.tensor([8.0, 5.0, 3.0])[:, None]
    return model


def test_n_outliers_rounds_half_up_and_keeps_at_least_one():
    assert n_outliers(768, 0.02) == 15  # 15.36
    assert n_outliers(3072, 0.02) == 61  # 61.44
    assert n_outliers(100, 0.025) == 3  # 2.5 -> 3
    assert n_outliers(10, 0.01) == 1
    assert n_outliers(10, 0.0) == 0


def test_outlier_units_are_the_top_std_rows():
    g = np.random.default_rng(0)
    W = g.normal(size=(50, 30)) * g.uniform(0.1, 3, size=(50, 1))
    mask = outlier_units(torch.from_numpy(W), 0.1)
    expected = set(np.argsort(-W.std(axis=1))[:5].tolist())
    assert set(torch.nonzero(mask).flatten().tolist()) == expected


def test_consumer_name_substitutes_wildcards():
    assert consumer_name("transformer.h.11.attn.c_proj", "transformer.h.*.attn.c_proj", "transformer.h.*.mlp.c_fc") == "transformer.h.11.mlp.c_fc"
    assert consumer_name("transformer.h.11.mlp.c_fc", "transformer.h.*.attn.c_proj", "transformer.h.*.mlp.c_fc") is None
    with pytest.raises(ValueError, match="as many"):
        consumer_name("a.b", "*.b", "c")


def test_keep_columns_follow_the_family_pairs():
    model = tiny_opt()
    keep = outlier_keep_columns(model, OPT_PAIRS, 0.05)
    assert sorted(keep) == [f"model.decoder.layers.{i}.{m}" for i in (0, 1) for m in ("fc1", "fc2")]
    for i, layer in enumerate(model.model.decoder.layers):
        fc1_keep = keep[f"model.decoder.layers.{i}.fc1"]
        assert fc1_keep.shape == (64,) and int(fc1_keep.sum()) == 3
        assert torch.nonzero(fc1_keep).flatten().tolist() == [3, 17, 40]  # the inflated units
        std = layer.fc1.weight.detach().double().std(dim=1, unbiased=False)
        assert set(torch.nonzero(keep[f"model.decoder.layers.{i}.fc2"]).flatten().tolist()) == set(
            torch.topk(std, 6).indices.tolist()
        )
    with pytest.raises(ValueError, match="outlier_pairs"):
        keep_columns_for(model, QuantSpec(4, outlier_frac=0.02), outlier_pairs=None)
    assert keep_columns_for(model, QuantSpec(4), outlier_pairs=OPT_PAIRS) is None


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_kept_columns_bit_identical_and_ledger_hand_count(method):
    spec = QuantSpec(3, "nf", blocksize=64, outlier_frac=0.05)
    plain_spec = QuantSpec(3, "nf", blocksize=64)
    model = tiny_opt()
    before = {n: weight_matrix(m).detach().clone() for n, m in quantizable_modules(model, None).items()}
    keep = outlier_keep_columns(model, OPT_PAIRS, spec.outlier_frac)
    calibration = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(0))
    # both methods derive the masks themselves from the family's pairs (the same rule as `keep`)
    options = {"outlier_pairs": OPT_PAIRS, "progress": False}
    ledger = apply_method(method, model, spec, calibration=calibration, options=options)
    after = {n: weight_matrix(m).detach() for n, m in quantizable_modules(model, None).items()}
    for name, mask in keep.items():
        assert torch.equal(after[name][:, mask], before[name][:, mask]), name
        assert not torch.equal(after[name][:, ~mask], before[name][:, ~mask]), name
    if method == "rtn":  # unkept values: round-to-nearest of the [out, in - kept] sub-matrix
        for name in after:
            mask = keep.get(name, torch.zeros(before[name].shape[1], dtype=torch.bool))
            assert torch.equal(after[name][:, ~mask], fake_quantize(before[name][:, ~mask].contiguous(), plain_spec)), name
    # Hand count: kept values cost 16 bits; the rest k bits plus one fp16 absmax per block of
    # the [out, in - kept] sub-matrix; every parameter outside the quantized linears 16 bits.
    total = 0
    for name, W in before.items():
        kept = int(keep[name].sum()) * W.shape[0] if name in keep else 0
        q = W.numel() - kept
        total += kept * 16 + q * 3 + -(-q // 64) * 16
    n_params = sum(p.numel() for p in model.parameters())
    total += (n_params - sum(W.numel() for W in before.values())) * 16
    assert ledger.total_bits == total and ledger.n_params == n_params
    p_kept = sum(int(m.sum()) * before[n].shape[0] for n, m in keep.items()) / n_params
    plain = apply_method("rtn", tiny_opt(), QuantSpec(3, "nf", blocksize=64), options={"progress": False})
    # +p·(16 − k) bits per parameter (§5.2), less the block constants the kept columns no
    # longer need (here every sub-matrix is a whole number of blocks)
    extra_per_param = (ledger.total_bits - plain.total_bits) / n_params
    assert extra_per_param == pytest.approx(p_kept * (16 - 3 - 16 / 64), rel=1e-12)


def test_gpt2_family_pairs_rank_conv1d_output_units():
    """GPT-2 stores Conv1D weights [in, out]: an output unit's weights are a *column* of the
    stored tensor. Ranking the stored rows instead would pick the wrong units."""
    from kscale.models import get_family

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)).eval()
    with torch.no_grad():
        model.transformer.h[1].attn.c_proj.weight[:, [5, 9]] *= 6.0  # stored [in, out]: output units 5, 9
    keep = outlier_keep_columns(model, get_family("gpt2").outlier_pairs, 2 / 32)
    assert torch.nonzero(keep["transformer.h.1.mlp.c_fc"]).flatten().tolist() == [5, 9]
    stored = model.transformer.h[0].mlp.c_fc.weight.detach()  # [32, 128] = [in, out]
    expected = set(torch.topk(stored.double().std(dim=0, unbiased=False), 8).indices.tolist())
    assert set(torch.nonzero(keep["transformer.h.0.mlp.c_proj"]).flatten().tolist()) == expected
