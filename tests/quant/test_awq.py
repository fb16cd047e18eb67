"""AWQ (Lin et al. 2023): beats round to nearest on uneven, correlated inputs; alpha = 0 is round to
nearest bit for bit; the 16-bit scale vectors are in the ledger; GPT-2 Conv1D and OPT Linear
layers get scales from their own 16-bit inputs; kept outlier columns stay bit-identical."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
import yaml

import kscale.quant  # noqa: F401  (registers the methods)
from kscale.quant import METHODS, QuantSpec, apply_method, fake_quantize, quantizable_modules, weight_matrix
from kscale.quant.awq import (
    AWQConfig, InputStats, awq_effective_weight, awq_grid, awq_quantize_model, awq_scales, awq_search,
)
from kscale.quant.calibration import CalibrationConfig, CalibrationSet
from kscale.quant.model import quantize_matrix
from kscale.quant.outliers import outlier_keep_columns

ROOT = Path(__file__).resolve().parents[2]
OPT_PAIRS = (
    ("model.decoder.layers.*.self_attn.out_proj", "model.decoder.layers.*.fc1"),
    ("model.decoder.layers.*.fc1", "model.decoder.layers.*.fc2"),
)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # uneven input channels (what AWQ exploits): a few large LayerNorm gains
        for block in model.transformer.h:
            block.ln_1.weight[[2, 11, 23]] *= torch.tensor([30.0, 12.0, 50.0])
            block.ln_2.weight[[5, 19]] *= torch.tensor([25.0, 40.0])
    return model


def tiny_opt(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.OPTConfig(
        num_hidden_layers=2, hidden_size=64, ffn_dim=128, num_attention_heads=4, vocab_size=96,
        max_position_embeddings=64, word_embed_proj_dim=64, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )
    model = transformers.OPTForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.self_attn_layer_norm.weight[[3, 40]] *= torch.tensor([30.0, 60.0])
            layer.final_layer_norm.weight[[7, 50]] *= torch.tensor([20.0, 45.0])
            layer.self_attn.out_proj.weight[[3, 17, 40]] *= torch.tensor([8.0, 5.0, 3.0])[:, None]  # outlier producers
    return model


def calibration(vocab: int) -> CalibrationSet:
    tokens = torch.randint(3, vocab, (4, 16), generator=torch.Generator().manual_seed(1))
    return CalibrationSet(tokens, CalibrationConfig(dataset="text", nsamples=4, seqlen=16))


def independent_inputs(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every quantizable layer's inputs ``[tokens, in]`` from plain full-model forwards."""
    seen: dict[str, list[torch.Tensor]] = {}

    def record(name, x):
        seen.setdefault(name, []).append(x.reshape(-1, x.shape[-1]))

    handles = [m.register_forward_hook(lambda m, a, o, n=n: record(n, a[0]))
               for n, m in quantizable_modules(model).items()]
    with torch.no_grad():
        for row in tokens:
            model(row[None])
    for h in handles:
        h.remove()
    return {n: torch.cat(xs) for n, xs in seen.items()}


def reference_scales(X: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's scale from its definition (llm-awq auto_scale): mean|x|^alpha, clamp 1e-4,
    / sqrt(max·min), stored in fp16."""
    s = X.abs().mean(dim=0).pow(alpha).clamp(min=1e-4)
    return (s / (s.max() * s.min()).sqrt()).half().float()


# ----------------------------------------------------------------------------- one linear


def correlated_uneven_inputs(n: int, cin: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(cin)
    chol = torch.linalg.cholesky(0.6 ** (idx[:, None] - idx[None, :]).abs().float())
    X = torch.randn(n, cin, generator=g) @ chol.T  # neighbouring channels correlated (rho 0.6)
    scale = torch.ones(cin)
    scale[[3, 10, 22, 37, 41, 60]] = torch.tensor([10.0, 20.0, 35.0, 50.0, 75.0, 100.0])
    return X * scale


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dtype", ["int", "nf"])
def test_awq_output_error_below_rtn_on_uneven_correlated_inputs(dtype, bits):
    X = correlated_uneven_inputs(2048, 64, seed=0)
    W = torch.randn(48, 64, generator=torch.Generator().manual_seed(2)) * 0.05
    spec = QuantSpec(bits, dtype, blocksize=32)
    result = awq_search([W], InputStats.of(X), spec, n_grid=20)

    def err(X, W_hat):
        return float(((X @ W.T - X @ W_hat.T) ** 2).sum())

    # Every grid point recomputed from the definition with plain matrix products.
    grid = [i / 20 for i in range(20)]
    refs = []
    for alpha in grid:
        s = reference_scales(X, alpha)
        refs.append((fake_quantize(W * s, spec) / s, alpha))
    errors = [err(X, W_hat) for W_hat, _ in refs]
    best = min(range(20), key=lambda i: errors[i])
    assert awq_grid(20) == grid
    assert result.alpha == grid[best] and result.alpha > 0
    assert torch.equal(result.weights[0], refs[best][0])
    assert torch.equal(result.scales, reference_scales(X, result.alpha))
    assert result.errors == pytest.approx(errors, rel=1e-4)
    rtn = err(X, fake_quantize(W, spec))
    assert errors[0] == pytest.approx(rtn, rel=1e-12)  # alpha = 0 is round to nearest
    assert result.error < 0.5 * rtn
    # ... and it is not fitted to these tokens: fresh inputs of the same kind agree
    X_new = correlated_uneven_inputs(2048, 64, seed=5)
    assert err(X_new, result.weights[0]) < 0.5 * err(X_new, fake_quantize(W, spec))


def test_alpha_zero_scales_are_one_and_give_rtn_in_every_float_dtype():
    mean_abs = torch.tensor([0.0, 1e-9, 3.0, 250.0, 1e5])
    assert torch.equal(awq_scales(mean_abs, 0.0), torch.ones(5))
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        W = (torch.randn(16, 40, generator=g) * 0.1).to(dt)
        for spec in (QuantSpec(3, "nf", blocksize=64), QuantSpec(4, "quantile", blocksize=None, centered=True)):
            assert torch.equal(awq_effective_weight(W, torch.ones(40), spec), quantize_matrix(W, spec)), (dt, spec)
    s = awq_scales(torch.tensor([1e-8, 1.0, 1e6]), 0.95)  # extreme spread: stays finite in fp16
    assert torch.isfinite(1 / s).all() and torch.equal(s, s.half().float())


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("build,vocab", [(tiny_gpt2, 64), (tiny_opt, 96)], ids=["gpt2-conv1d", "opt-linear"])
@pytest.mark.parametrize("spec", [QuantSpec(3, "int", blocksize=64), QuantSpec(4, "nf", blocksize=None),
                                  QuantSpec(3, "quantile", blocksize=32, centered=True)], ids=lambda s: s.label)
def test_alpha_zero_reproduces_rtn_bit_identically(build, vocab, spec):
    awq, rtn = build(), build()
    ledger = apply_method("awq", awq, spec, calibration=calibration(vocab), options={"n_grid": 1})
    plain = apply_method("rtn", rtn, spec, options={"progress": False})
    got, want = quantizable_modules(awq), quantizable_modules(rtn)
    for name in want:
        assert torch.equal(weight_matrix(got[name]), weight_matrix(want[name])), name
    # same storage plus the (here all-ones) 16-bit vectors, one per input group
    s_bits = ledger.total_bits - plain.total_bits
    assert s_bits == ledger.other_bits - plain.other_bits and s_bits > 0 and s_bits % 16 == 0
    assert ledger.n_quantized == plain.n_quantized and ledger.payload_bits == plain.payload_bits


def test_ledger_hand_count_includes_the_scale_vectors():
    h, f, layers, k, B = 64, 128, 2, 4, 64
    spec = QuantSpec(k, "int", blocksize=B)
    n_weights = layers * (4 * h * h + 2 * h * f)
    n_blocks = n_weights // B  # every matrix is a whole number of blocks
    for group, s_per_layer in ((True, 3 * h + f), (False, 5 * h + f)):
        # grouped: q/k/v share one s (input h), out_proj (h), fc1 (h), fc2 (f); else q, k, v each own one
        model = tiny_opt()
        n_params = sum(p.numel() for p in model.parameters())
        ledger = apply_method("awq", model, spec, calibration=calibration(96),
                              options={"group_shared_inputs": group, "n_grid": 4})
        s_bits = layers * s_per_layer * 16
        assert ledger.n_quantized == n_weights and ledger.n_params == n_params
        assert ledger.payload_bits == n_weights * k and ledger.constant_bits == n_blocks * 16
        assert ledger.other_bits == s_bits
        assert ledger.total_bits == n_weights * k + n_blocks * 16 + s_bits + (n_params - n_weights) * 16
        assert ledger.bits_per_param == (n_weights * (k + 16 / B) + s_bits) / n_weights
        scale_rows = sorted(r.name for r in ledger.rows if r.name.endswith(":awq_scale"))
        assert len(scale_rows) == layers * (4 if group else 6)
    assert "model.decoder.layers.0.self_attn.q_proj+model.decoder.layers.0.self_attn.k_proj+" \
           "model.decoder.layers.0.self_attn.v_proj:awq_scale" in {r.name for r in apply_method(
               "awq", tiny_opt(), spec, calibration=calibration(96), options={"n_grid": 2}).rows}


@pytest.mark.parametrize("build,vocab", [(tiny_gpt2, 64), (tiny_opt, 96)], ids=["gpt2-conv1d", "opt-linear"])
def test_scales_come_from_each_layers_16_bit_inputs(build, vocab):
    """The block-replay capture must see what a plain forward of the 16-bit model feeds each
    layer (Conv1D's transposed weight included): s from those inputs, W_eff = Q(W·s)/s."""
    spec = QuantSpec(3, "nf", blocksize=32)
    cal = calibration(vocab)
    model, ref = build(), build()
    before = {n: weight_matrix(m).detach().clone() for n, m in quantizable_modules(ref).items()}
    inputs = independent_inputs(ref, cal.tokens)
    groups = awq_quantize_model(model, spec, cal, config=AWQConfig(n_grid=20))
    after = quantizable_modules(model)
    assert sorted(n for g in groups for n in g.names) == sorted(before)
    assert any(g.alpha > 0 for g in groups)
    for g in groups:
        X = inputs[g.names[0]]
        for name in g.names:  # grouped layers really read the same input
            assert torch.equal(inputs[name], X)
        torch.testing.assert_close(g.scales, reference_scales(X, g.alpha), rtol=1e-3, atol=0)
        err = 0.0
        for name in g.names:
            expected = fake_quantize(before[name] * g.scales, spec) / g.scales
            assert torch.equal(weight_matrix(after[name]), expected), name
            err += float(((X @ (before[name] - expected).T) ** 2).sum())
        assert g.error == pytest.approx(err, rel=1e-3)
        assert g.error <= g.rtn_error
    if build is tiny_opt:
        assert {len(g.names) for g in groups} == {1, 3}  # q/k/v share the attention LayerNorm output


@pytest.mark.parametrize("build,vocab", [(tiny_gpt2, 64), (tiny_opt, 96)], ids=["gpt2-conv1d", "opt-linear"])
def test_apply_method_awq_beats_rtn_on_model_outputs(build, vocab):
    """End to end, on held-out tokens: the logits move less from the 16-bit model's than with
    round to nearest (summed over three random models; per model it ranges 0.2x-0.9x here)."""
    spec = QuantSpec(3, "int", blocksize=64)
    cal = calibration(vocab)
    held_out = torch.randint(3, vocab, (4, 16), generator=torch.Generator().manual_seed(9))
    err_awq = err_rtn = 0.0
    for seed in range(3):
        ref, awq, rtn = build(seed), build(seed), build(seed)
        apply_method("awq", awq, spec, calibration=cal, options={"seed": 0})
        apply_method("rtn", rtn, spec, options={"progress": False})
        with torch.no_grad():
            logits = [m(held_out).logits for m in (ref, awq, rtn)]
        err_awq += float(((logits[1] - logits[0]) ** 2).mean())
        err_rtn += float(((logits[2] - logits[0]) ** 2).mean())
    assert err_awq < 0.8 * err_rtn


def test_missing_calibration_and_bad_options_are_rejected():
    method = METHODS.get("awq")
    assert method.needs_calibration and method.seed_matters
    with pytest.raises(ValueError, match="awq needs calibration"):
        apply_method("awq", tiny_opt(), QuantSpec(4))
    with pytest.raises(ValueError, match="n_grid"):
        apply_method("awq", tiny_opt(), QuantSpec(4), calibration=calibration(96), options={"n_grid": 0})
    with pytest.raises(ValueError, match="n_grid"):  # did-you-mean
        method.configure({"ngrid": 10})
    with pytest.raises(ValueError, match="bits=16"):
        method.check(QuantSpec(16))


def test_config_yaml_and_row_columns():
    options = yaml.safe_load((ROOT / "conf" / "method_options" / "awq.yaml").read_text())
    assert set(options) <= set(AWQConfig.option_names())
    assert set(AWQConfig.option_names()) - set(options) <= {"source", "path"}
    config = METHODS.get("awq").configure(options, seed=3, own_corpus="toy")
    assert config == AWQConfig(calibration=CalibrationConfig(dataset="toy", seed=3))
    row = METHODS.get("awq").row(config)
    assert row["awq_n_grid"] == 20 and row["awq_group_shared_inputs"] is True and row["awq_scale_bits"] == 16
    assert row["calib_dataset"] == "toy" and row["calib_seed"] == 3 and row["calib_nsamples"] == 128


def test_outlier_columns_stay_bit_identical():
    spec = QuantSpec(3, "nf", blocksize=64, outlier_frac=0.05)
    model = tiny_opt()
    before = {n: weight_matrix(m).detach().clone() for n, m in quantizable_modules(model).items()}
    keep = outlier_keep_columns(model, OPT_PAIRS, spec.outlier_frac)
    assert sorted(keep) == [f"model.decoder.layers.{i}.{m}" for i in (0, 1) for m in ("fc1", "fc2")]
    ledger = apply_method("awq", model, spec, calibration=calibration(96), options={"outlier_pairs": OPT_PAIRS})
    after = {n: weight_matrix(m).detach() for n, m in quantizable_modules(model).items()}
    for name, mask in keep.items():
        assert torch.equal(after[name][:, mask], before[name][:, mask]), name
        assert not torch.equal(after[name][:, ~mask], before[name][:, ~mask]), name
    plain = apply_method("rtn", tiny_opt(), spec, options={"outlier_pairs": OPT_PAIRS, "progress": False})
    s_bits = 2 * (3 * 64 + 128) * 16
    assert ledger.total_bits == plain.total_bits + s_bits and ledger.other_bits == plain.other_bits + s_bits
    groups = awq_quantize_model(tiny_opt(), spec, calibration(96), keep_columns=keep)
    for g in groups:
        if g.names[0] in keep:
            assert torch.equal(g.scales[keep[g.names[0]]], torch.ones(int(keep[g.names[0]].sum())))
