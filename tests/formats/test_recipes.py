"""llama.cpp's file types assign per-tensor GGUF types as ``llama_tensor_get_type`` does.

Hand-checked cases (a 32-layer llama, a 12-layer gpt2) list the raised layers explicitly rather
than recomputing ``use_more_bits``; the whole-model check compares the bytes a recipe implies for
Llama-2-7B with the published GGUF file sizes (TheBloke/Llama-2-7B-GGUF model card, GB), which
only a right assignment of every tensor reproduces to three digits.
"""
from __future__ import annotations

import pytest

from kscale.quant.gguf.recipes import (
    FILE_TYPES,
    gguf_file_type_for,
    gguf_ties_embeddings,
    hf_tensor_role,
    needs_imatrix,
    recipe_for_model,
)
from kscale.quant.gguf.types import GGUF_TYPES

# llama.cpp PR 1684: Q4_K_M "uses Q6_K for half of the attention.wv and feed_forward.w2 tensors"
LLAMA32_MORE_BITS = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
GPT2_12_MORE_BITS = [0, 3, 6, 9, 10, 11]


def _types(role, file_type, n_layers, n_per_row=4096, **kw):
    return [gguf_file_type_for(role, i, n_layers, file_type, n_per_row=n_per_row, **kw) for i in range(n_layers)]


def test_llama_32_layers_q4_k_m():
    for role in ("attn_v", "ffn_down"):
        types = _types(role, "q4_k_m", 32, n_per_row=11008 if role == "ffn_down" else 4096)
        assert [i for i, t in enumerate(types) if t == "q6_k"] == LLAMA32_MORE_BITS
        assert {t for i, t in enumerate(types) if i not in LLAMA32_MORE_BITS} == {"q4_k"}
    for role in ("attn_q", "attn_k", "attn_output", "ffn_up", "ffn_gate"):
        assert set(_types(role, "q4_k_m", 32)) == {"q4_k"}
    assert gguf_file_type_for("output", None, 32, "q4_k_m", n_per_row=4096) == "q6_k"
    assert gguf_file_type_for("token_embd", None, 32, "q4_k_m", n_per_row=4096) == "q4_k"
    assert gguf_file_type_for("token_embd", None, 32, "q4_k_m", n_per_row=4096, tied_embeddings=True) == "q6_k"


def test_llama_32_layers_other_file_types():
    # Q3_K_M: attn_v q5_k for the first two, else q4_k; ffn_down q5_k below n/16 = 2, else q4_k
    assert _types("attn_v", "q3_k_m", 32)[:3] == ["q5_k", "q5_k", "q4_k"]
    assert _types("ffn_down", "q3_k_m", 32)[:3] == ["q5_k", "q5_k", "q4_k"]
    assert set(_types("attn_output", "q3_k_m", 32)) == {"q4_k"}
    assert set(_types("ffn_up", "q3_k_m", 32)) == {"q3_k"}
    # Q3_K_L: attn_v, attn_output, ffn_down all q5_k
    assert {t for r in ("attn_v", "attn_output", "ffn_down") for t in _types(r, "q3_k_l", 32)} == {"q5_k"}
    # Q4_K_S: attn_v below 4, ffn_down below n/8 = 4 -> q5_k
    assert _types("attn_v", "q4_k_s", 32)[3:5] == ["q5_k", "q4_k"]
    assert _types("ffn_down", "q4_k_s", 32)[3:5] == ["q5_k", "q4_k"]
    # Q2_K_S: ffn_down below n/8 -> q4_k; attn_v q4_k only with grouped-query attention (n_gqa >= 4)
    assert _types("ffn_down", "q2_k_s", 32)[3:5] == ["q4_k", "q2_k"]
    assert set(_types("attn_v", "q2_k_s", 32)) == {"q2_k"}
    assert set(_types("attn_v", "q2_k_s", 32, n_gqa=8)) == {"q4_k"}
    assert needs_imatrix("q2_k_s", "q2_k", "attn_q") and not needs_imatrix("q2_k_s", "q4_k", "ffn_down")
    # 70B: attn_v raised to q5_k; single-type files raise only the head
    assert set(_types("attn_v", "q3_k_s", 80, is_70b=True)) == {"q5_k"}
    assert set(_types("ffn_down", "q5_k_s", 32)) == {"q5_k"}
    assert gguf_file_type_for("output", None, 32, "q8_0", n_per_row=4096) == "q8_0"
    assert gguf_file_type_for("output", None, 32, "q6_k", n_per_row=4096) == "q6_k"


def test_gpt2_12_layers_q4_k_m_and_q5_k_m():
    # gpt2's fused attn_qkv is in llama.cpp's attn_v category: the attn_v rule applies
    for file_type, high, low in (("q4_k_m", "q6_k", "q4_k"), ("q5_k_m", "q6_k", "q5_k")):
        for role, width in (("attn_qkv", 768), ("ffn_down", 3072)):
            types = _types(role, file_type, 12, n_per_row=width)
            assert types == [high if i in GPT2_12_MORE_BITS else low for i in range(12)], (file_type, role)
    names = {"transformer.wte": (50257, 768), "lm_head": (50257, 768), "transformer.wpe": (1024, 768),
             "transformer.h.3.attn.c_attn": (2304, 768), "transformer.h.4.mlp.c_proj": (768, 3072),
             "transformer.h.4.ln_1": (768,), "transformer.h.4.attn.c_attn.bias": (2304,)}
    recipe = recipe_for_model(names, "q4_k_m", model_type="gpt2", tie_word_embeddings=True, n_layers=12)
    # convert_hf_to_gguf writes gpt2's tied embedding twice, so llama.cpp sees it untied
    assert recipe == {"transformer.wte": "q4_k", "lm_head": "q6_k", "transformer.wpe": "f16",
                      "transformer.h.3.attn.c_attn": "q6_k", "transformer.h.4.mlp.c_proj": "q4_k",
                      "transformer.h.4.ln_1": "f16", "transformer.h.4.attn.c_attn.bias": "f16"}


def test_row_length_fallbacks():
    # 800 is a multiple of 32 but not of 256: k-types fall back to 32-blocks
    assert gguf_file_type_for("attn_output", 0, 12, "q4_k_m", n_per_row=800) == "q5_0"
    assert gguf_file_type_for("attn_qkv", 0, 12, "q4_k_m", n_per_row=800) == "q8_0"  # q6_k -> q8_0
    assert gguf_file_type_for("ffn_up", 0, 12, "q3_k_m", n_per_row=800) == "q4_0"
    assert gguf_file_type_for("ffn_up", 0, 12, "q5_k_s", n_per_row=800) == "q5_1"
    assert gguf_file_type_for("output", None, 12, "q4_k_m", n_per_row=800) == "q8_0"
    # 40 fits no block of 32: F16 (llama.cpp: "must use F16 due to unusual shape"; q8_0 has no fallback)
    assert gguf_file_type_for("ffn_up", 0, 12, "q4_k_m", n_per_row=40) == "f16"
    assert gguf_file_type_for("ffn_up", 0, 12, "q8_0", n_per_row=40) == "f16"


# TheBloke/Llama-2-7B-GGUF, "Provided files": file sizes in GB (10^9 bytes), including ~1 MB of metadata
PUBLISHED_LLAMA2_7B_GB = {"q3_k_s": 2.95, "q3_k_m": 3.30, "q3_k_l": 3.60, "q4_k_s": 3.86, "q4_k_m": 4.08,
                          "q5_k_s": 4.65, "q5_k_m": 4.78, "q6_k": 5.53, "q8_0": 7.16}


def _llama2_7b_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens": (32000, 4096), "lm_head": (32000, 4096),
                                          "model.norm": (4096,)}
    for i in range(32):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            shapes[f"{p}self_attn.{proj}_proj"] = (4096, 4096)
        shapes[f"{p}mlp.gate_proj"] = shapes[f"{p}mlp.up_proj"] = (11008, 4096)
        shapes[f"{p}mlp.down_proj"] = (4096, 11008)
        shapes[f"{p}input_layernorm"] = shapes[f"{p}post_attention_layernorm"] = (4096,)
    return shapes


@pytest.mark.parametrize("file_type", sorted(PUBLISHED_LLAMA2_7B_GB))
def test_llama2_7b_file_size_matches_published(file_type):
    shapes = _llama2_7b_shapes()
    recipe = recipe_for_model(shapes, file_type, model_type="llama", tie_word_embeddings=False)
    nbytes = 0
    for name, tensor_type in recipe.items():
        shape = shapes[name]
        if len(shape) == 1:
            nbytes += 4 * shape[0]  # GGUF keeps norms in F32
            continue
        t = GGUF_TYPES[tensor_type]
        nbytes += shape[0] * shape[1] // t.block_values * t.block_bytes
    assert abs((nbytes + 1e6) / 1e9 - PUBLISHED_LLAMA2_7B_GB[file_type]) < 0.006


def test_hf_names_map_to_roles():
    cases = {
        "transformer.h.3.attn.c_attn": ("attn_qkv", 3), "transformer.h.3.mlp.c_fc": ("ffn_up", 3),
        "model.decoder.layers.5.self_attn.v_proj": ("attn_v", 5), "model.decoder.layers.5.fc2": ("ffn_down", 5),
        "model.decoder.embed_tokens": ("token_embd", None), "model.decoder.embed_positions": ("position_embd", None),
        "gpt_neox.layers.2.attention.query_key_value": ("attn_qkv", 2), "embed_out": ("output", None),
        "gpt_neox.layers.2.mlp.dense_4h_to_h": ("ffn_down", 2), "gpt_neox.embed_in": ("token_embd", None),
        "transformer.h.0.self_attention.dense": ("attn_output", 0), "transformer.word_embeddings": ("token_embd", None),
        "model.layers.7.mlp.gate_proj": ("ffn_gate", 7), "model.layers.7.self_attn.o_proj": ("attn_output", 7),
        "model.layers.7.input_layernorm": ("norm", 7), "lm_head": ("output", None),
        "blk.3.attn_v.weight": ("attn_v", 3), "output_norm.weight": ("norm", None),
        "model.decoder.project_in": ("other", None),
    }
    for name, expected in cases.items():
        assert hf_tensor_role(name) == expected, name
    assert gguf_file_type_for("model.layers.3.self_attn.v_proj", None, 32, "q4_k_m") == "q6_k"
    assert gguf_ties_embeddings("llama", True) and not gguf_ties_embeddings("bloom", True)


def test_bad_inputs():
    with pytest.raises(ValueError, match="Did you mean 'q4_k_m'"):
        gguf_file_type_for("attn_v", 0, 32, "q4_km")
    with pytest.raises(ValueError, match="unknown tensor role"):
        gguf_file_type_for("attention", 0, 32, "q4_k_m")
    with pytest.raises(ValueError, match="layer index in \\[0, 32\\)"):
        gguf_file_type_for("ffn_down", 32, 32, "q4_k_m")
    assert sorted(FILE_TYPES) == sorted(["q2_k_s", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s",
                                         "q5_k_m", "q6_k", "q8_0"])


def test_recipe_for_a_loaded_model():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from kscale.quant.gguf.recipes import recipe_for_torch_model

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_positions=16, n_embd=256, n_layer=12, n_head=2,
                                      bos_token_id=0, eos_token_id=0))
    r = recipe_for_torch_model(gpt2, "q4_k_m")
    # Conv1D is [in, out]: c_fc's rows are 256 wide, c_proj's (mlp) 1024
    assert r["transformer.h.0.mlp.c_fc"].shape == (1024, 256) and r["transformer.h.0.mlp.c_proj"].shape == (256, 1024)
    assert [r[f"transformer.h.{i}.mlp.c_proj"].gguf_type for i in range(12)] == \
        ["q6_k" if i in GPT2_12_MORE_BITS else "q4_k" for i in range(12)]
    # tied in Hugging Face, written twice by llama.cpp's gpt2 converter: embedding q4_k, head q6_k
    assert (r["transformer.wte"].gguf_type, r["lm_head"].gguf_type, r["transformer.wpe"].gguf_type) == \
        ("q4_k", "q6_k", "f16")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True))
    r = recipe_for_torch_model(llama, "q2_k_s")
    assert "lm_head" not in r and r["model.embed_tokens"].gguf_type == "q6_k"  # tied: the head's rule
    assert r["model.layers.1.self_attn.v_proj"].gguf_type == "q4_k"  # n_gqa = 4
    assert r["model.layers.1.self_attn.q_proj"].gguf_type == "q2_k"
