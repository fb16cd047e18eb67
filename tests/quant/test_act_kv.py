"""Activation and KV-cache quantization (issue 20 §1) against hand-written references.

Each architecture is a tiny randomly initialised model built from its transformers config (no
download). The KV test recomputes every layer's attention by hand -- projections from the
weights, K and V rounded by a hand-written symmetric int quantizer, RoPE / ALiBi / GQA written
out -- and compares with the attention output the hooked model produces.
"""
from __future__ import annotations

import math

import pytest
import torch
import transformers as tf

from kscale.quant.runtime import RuntimePrecision, RuntimeQuantSpec, kv_bits_per_token, runtime_quantization

T = 9  # tokens per sequence


def hand_int(x: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Symmetric int, one fp16-stored absmax per ``group`` consecutive values of the last dim."""
    top = 2 ** (bits - 1) - 1
    g = x.reshape(-1, group)
    scale = g.abs().amax(1, keepdim=True).half().float()
    return (torch.round(g / scale * top) / top * scale).reshape(x.shape)


def rope(x, theta, rot):
    """Rotate-half RoPE on the first ``rot`` dims of x [B, H, T, hd]."""
    inv = 1.0 / theta ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)
    freqs = torch.arange(x.shape[-2], dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    xr, xp = x[..., :rot], x[..., rot:]
    half = torch.cat([-xr[..., rot // 2:], xr[..., : rot // 2]], -1)
    return torch.cat([xr * cos + half * sin, xp], -1)


def attend(q, k, v, bias=None):
    """Causal softmax attention, q/k/v [B, H, T, hd] -> merged [B, T, H*hd]."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = s.softmax(-1) @ v
    return out.transpose(1, 2).flatten(2)


def heads(x, n):  # [B, T, n*hd] -> [B, n, T, hd]
    return x.unflatten(-1, (n, -1)).transpose(1, 2)


def gpt2_qkv(attn, h, kvq):
    H = attn.c_attn.weight.shape[0]
    qkv = h @ attn.c_attn.weight + attn.c_attn.bias
    n = attn.num_heads
    q, k, v = qkv.split(H, -1)
    return heads(q, n), heads(kvq(k, n), n), heads(kvq(v, n), n), None


def opt_qkv(attn, h, kvq):
    n = attn.num_heads
    lin = lambda m: h @ m.weight.T + m.bias  # noqa: E731
    return heads(lin(attn.q_proj), n), heads(kvq(lin(attn.k_proj), n), n), heads(kvq(lin(attn.v_proj), n), n), None


def neox_qkv(attn, h, kvq, n=4, theta=10000.0, pct=0.25):
    qkv = (h @ attn.query_key_value.weight.T + attn.query_key_value.bias).unflatten(-1, (n, -1))
    hd = qkv.shape[-1] // 3
    q, k, v = (qkv[..., i * hd:(i + 1) * hd].flatten(2) for i in range(3))
    rot = int(hd * pct)
    k, v = kvq(k, n), kvq(v, n)
    return rope(heads(q, n), theta, rot), rope(heads(k, n), theta, rot), heads(v, n), None


def bloom_qkv(attn, h, kvq, n=4):
    qkv = (h @ attn.query_key_value.weight.T + attn.query_key_value.bias).unflatten(-1, (n, 3, -1))
    q, k, v = (qkv[..., i, :].flatten(2) for i in range(3))
    slopes = torch.tensor([2 ** (-8 * (i + 1) / n) for i in range(n)])  # n a power of two
    bias = slopes[:, None, None] * torch.arange(T, dtype=torch.float32)[None, None, :]
    return heads(q, n), heads(kvq(k, n), n), heads(kvq(v, n), n), bias


def llama_qkv(attn, h, kvq, n=4, n_kv=2, theta=10000.0):
    q = h @ attn.q_proj.weight.T
    k, v = kvq(h @ attn.k_proj.weight.T, n_kv), kvq(h @ attn.v_proj.weight.T, n_kv)
    hd = q.shape[-1] // n
    k, v = rope(heads(k, n_kv), theta, hd), heads(v, n_kv)  # K rounded before RoPE (pre-RoPE)
    rep = n // n_kv
    return rope(heads(q, n), theta, hd), k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), None


small = dict(vocab_size=64)
ARCHS = {  # config, attention module suffix, its input module, its output projection, hand qkv
    "gpt2": (tf.GPT2Config(n_embd=32, n_head=4, n_layer=2, n_positions=32, **small),
             "attn", "c_attn", "c_proj", gpt2_qkv),
    "opt": (tf.OPTConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, ffn_dim=64,
                         max_position_embeddings=32, word_embed_proj_dim=32, **small),
            "self_attn", "q_proj", "out_proj", opt_qkv),
    "gpt_neox": (tf.GPTNeoXConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                  intermediate_size=64, max_position_embeddings=32, **small),
                 "attention", "query_key_value", "dense", neox_qkv),
    "bloom": (tf.BloomConfig(hidden_size=32, n_head=4, n_layer=2, **small),
              "self_attention", "query_key_value", "dense", bloom_qkv),
    "llama": (tf.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                             num_hidden_layers=2, intermediate_size=64, max_position_embeddings=32, **small),
              "self_attn", "q_proj", "o_proj", llama_qkv),
}


def tiny(arch):
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(ARCHS[arch][0]).eval()
    with torch.no_grad():  # random biases/norms too, so a wrong slice cannot hide behind zeros
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def ids():
    return torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(1))


def capture(model, suffix, inp, out):
    """Per attention layer: (module, input of its QKV projection, input of its output projection)."""
    seen, handles = [], []
    for name, mod in model.named_modules():
        if name.endswith("." + suffix) and hasattr(mod, inp):
            rec = {"mod": mod}
            seen.append(rec)
            handles.append(getattr(mod, inp).register_forward_pre_hook(
                lambda m, a, rec=rec: rec.__setitem__("h", a[0].detach().clone())))
            handles.append(getattr(mod, out).register_forward_pre_hook(
                lambda m, a, rec=rec: rec.__setitem__("ctx", a[0].detach().clone())))
    return seen, handles


@pytest.mark.parametrize("arch", list(ARCHS))
def test_kv_quantized_forward_equals_hand_written_attention(arch):
    cfg, suffix, inp, out, qkv = ARCHS[arch]
    model = tiny(arch)
    kv = RuntimeQuantSpec(4, "head", kind="kv")
    seen, handles = capture(model, suffix, inp, out)
    with torch.no_grad(), runtime_quantization(model, RuntimePrecision(kv=kv)):
        model(ids())
    for h in handles:
        h.remove()
    assert len(seen) == 2
    for rec in seen:
        hd = rec["ctx"].shape[-1] // 4
        kvq = lambda x, n: hand_int(x, 4, hd)  # noqa: E731  (per head per token)
        q, k, v, bias = qkv(rec["mod"], rec["h"], kvq)
        torch.testing.assert_close(rec["ctx"], attend(q, k, v, bias), atol=1e-5, rtol=1e-5)
        q, k, v, bias = qkv(rec["mod"], rec["h"], lambda x, n: x)
        assert (rec["ctx"] - attend(q, k, v, bias)).abs().max() > 1e-3  # 4-bit K/V changed it


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_activation_quantized_forward_equals_quantizer_on_each_linear_input(arch):
    from kscale.quant import ModuleFilter, quantizable_modules

    model = tiny(arch)
    x = ids()
    precision = RuntimePrecision(act=RuntimeQuantSpec(8, "token"))
    with torch.no_grad(), runtime_quantization(model, precision):
        hooked = model(x).logits
    linears = quantizable_modules(model, ModuleFilter())
    assert len(linears) >= 8 and not any("lm_head" in n for n in linears)
    handles = [m.register_forward_pre_hook(lambda m, a: (hand_int(a[0], 8, a[0].shape[-1]),))
               for m in linears.values()]
    with torch.no_grad():
        by_hand = model(x).logits
    for h in handles:
        h.remove()
    torch.testing.assert_close(hooked, by_hand, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (model(x).logits - hooked).abs().max() > 1e-4


def test_block_granularity_keeps_blocks_inside_a_token():
    spec = RuntimeQuantSpec(3, "block5", kind="kv")
    x = torch.randn(2, 7, 4, 3)  # 12 values per token: blocks of 5, 5 and a ragged 2
    q = spec.apply(x)
    flat = x.flatten(-2)
    want = torch.cat([hand_int(flat[..., :10], 3, 5), hand_int(flat[..., 10:], 3, 2)], -1)
    torch.testing.assert_close(q.flatten(-2), want, atol=1e-6, rtol=1e-6)
    # token t's rounding does not depend on token t+1
    y = x.clone()
    y[:, -1] *= 100
    torch.testing.assert_close(spec.apply(y)[:, :-1], q[:, :-1], atol=0, rtol=0)


def test_off_is_bitwise_the_plain_model_and_hooks_are_removed():
    model = tiny("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(ids()).logits
        with runtime_quantization(model, RuntimePrecision()):
            off = model(ids()).logits
        with runtime_quantization(model, RuntimePrecision(RuntimeQuantSpec(4, "token"),
                                                          RuntimeQuantSpec(2, "head", kind="kv"))):
            on = model(ids()).logits
        after = model(ids()).logits
    assert torch.equal(plain, off) and torch.equal(plain, after) and not torch.equal(plain, on)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_hooks_are_removed_when_the_evaluation_fails():
    model = tiny("opt")
    with pytest.raises(RuntimeError, match="eval broke"):
        with runtime_quantization(model, RuntimePrecision(RuntimeQuantSpec(8, "token"),
                                                          RuntimeQuantSpec(4, "head", kind="kv"))):
            assert any(m._forward_hooks for m in model.modules())
            raise RuntimeError("eval broke")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_kv_on_an_unknown_architecture_says_which_are_supported():
    model = tiny("gpt2")
    model.config.model_type = "mamba"
    with pytest.raises(ValueError, match="supported model types: .*gpt2.*llama"):
        with runtime_quantization(model, RuntimePrecision(kv=RuntimeQuantSpec(4, "head", kind="kv"))):
            pass


def test_kv_bits_per_token_counts_payload_and_constants():
    llama = ARCHS["llama"][0]  # 2 layers, 2 KV heads of 8
    assert kv_bits_per_token(llama, RuntimeQuantSpec(kind="kv")) == 2 * 2 * 2 * 8 * 16
    assert kv_bits_per_token(llama, RuntimeQuantSpec(4, "head", kind="kv")) == 2 * 2 * (16 * 4 + 2 * 16)
    assert kv_bits_per_token(llama, RuntimeQuantSpec(4, "token", kind="kv")) == 2 * 2 * (16 * 4 + 16)
    assert kv_bits_per_token(llama, RuntimeQuantSpec(8, "block6", kind="kv")) == 2 * 2 * (16 * 8 + 3 * 16)


@pytest.mark.parametrize("bad", [dict(bits=1), dict(granularity="head"), dict(granularity="block1"),
                                 dict(dtype="quantile"), dict(dtype="intt")])
def test_bad_activation_specs_fail_with_one_line(bad):
    with pytest.raises(ValueError):
        RuntimeQuantSpec(**{"bits": 8, **bad})
