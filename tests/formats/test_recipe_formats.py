"""llama.cpp file types as formats (``ftype_q4_k_m`` ...): issue 18 §2, "File types".

On a tiny GPT-2 (embedding tied to the head) and a tiny Llama (untied, grouped-query attention),
built here: each tensor's type equals :mod:`kscale.quant.gguf.recipes`' assignment, embeddings and
head included; the ledger's ``total_bits`` equals the sum of every tensor's ggml size computed
independently from ``gguf.GGML_QUANT_SIZES``; quantized values equal the per-tensor type's fake
quantization; the snapshot restores every tensor bitwise; the exported file holds exactly those
bits; and a two-cell sweep with a recipe format runs end to end.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("kscale.quant.gguf", reason="the GGUF kernels have not landed")
from kscale.quant import WeightSnapshot, quantize_model  # noqa: E402
from kscale.quant.formats import FORMATS, fake_quantize, pack  # noqa: E402
from kscale.quant.gguf.recipes import FILE_TYPES, UNQUANTIZED, recipe_for_torch_model  # noqa: E402
from kscale.quant.ledger import ledger_for  # noqa: E402
from kscale.quant.modules import weight_matrix  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT2 = ROOT.parent / "shared" / "data" / "models" / "tiny-gpt2"


def _gpt2(n_embd: int = 256, vocab: int = 96, n_layer: int = 2, n_positions: int = 16):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def _llama(n_layers: int = 8, tied: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=n_layers,
                         num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=tied,
                         max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def gpt2():
    return _gpt2()


@pytest.fixture(scope="module")
def llama():
    return _llama()


def _expected_types(model, file_type: str) -> dict[str, str]:
    """recipes.py's assignment, read as the file kscale stores: a tied embedding/head pair once,
    under the embedding's name, at the head's type (a GGUF file without ``output.weight``)."""
    assignment = recipe_for_torch_model(model, file_type)
    out = {name: a.gguf_type for name, a in assignment.items() if a.role not in UNQUANTIZED}
    if model.get_input_embeddings().weight is model.get_output_embeddings().weight and "lm_head" in out:
        out["transformer.wte"] = out.pop("lm_head")
    return out


def _targets(model, file_type: str, **options) -> dict[str, str]:
    fmt = FORMATS.get(f"ftype_{file_type}")
    return {t.name: t.stored_type for t in fmt.targets(model, fmt.configure(**options))}


@pytest.mark.parametrize("file_type", list(FILE_TYPES))
def test_each_tensor_gets_the_recipe_type_embeddings_and_head_included(gpt2, llama, file_type):
    tied_llama = _llama(n_layers=2, tied=True)  # recipes.py itself lists the tied tensor once
    for model in (gpt2, llama, tied_llama):
        assert _targets(model, file_type) == _expected_types(model, file_type)
    assert "lm_head" not in _targets(tied_llama, file_type)
    llama_types = _targets(llama, file_type)
    assert "model.embed_tokens" in llama_types and "lm_head" in llama_types  # untied: both stored
    assert "lm_head" not in _targets(gpt2, file_type)  # tied: once, as the embedding


def test_recipe_rules_visible_on_the_tiny_models(gpt2, llama):
    """Spot values a wrong table would miss (llama.cpp's rules, n=8 layers: more bits at 0,3,6,7)."""
    m = _targets(llama, "q4_k_m")
    assert m["lm_head"] == "q6_k" and m["model.embed_tokens"] == "q4_k"
    assert [m[f"model.layers.{i}.self_attn.v_proj"] for i in range(8)] == \
        ["q6_k", "q4_k", "q4_k", "q6_k", "q4_k", "q4_k", "q6_k", "q6_k"]
    assert m["model.layers.1.mlp.down_proj"] == "q4_k" and m["model.layers.7.mlp.down_proj"] == "q6_k"
    assert _targets(llama, "q2_k_s")["model.layers.5.self_attn.v_proj"] == "q4_k"  # n_gqa = 4
    q3m = _targets(llama, "q3_k_m")  # attn_v q5_k in layers 0-1, then q4_k; ffn_down q5_k below n/16 = 0
    assert [q3m[f"model.layers.{i}.self_attn.v_proj"] for i in (0, 1, 2)] == ["q5_k", "q5_k", "q4_k"]
    assert q3m["model.layers.0.mlp.down_proj"] == "q4_k" and q3m["model.layers.0.self_attn.o_proj"] == "q4_k"
    assert q3m["model.layers.0.self_attn.q_proj"] == "q3_k"
    g = _targets(gpt2, "q8_0")
    assert set(g.values()) == {"q8_0"}  # q8_0's head stays q8_0
    assert _targets(gpt2, "q4_k_m")["transformer.wte"] == "q6_k"  # tied embedding = the head


def _ggml_bits(shape: tuple[int, int], stored: str) -> int:
    """Bits of one [rows, n_per_row] tensor from gguf's own table of block sizes."""
    import gguf

    rows, n_per_row = shape
    if stored == "f16":
        return rows * n_per_row * 16
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[stored.upper()]]
    assert n_per_row % block_values == 0
    return rows * n_per_row // block_values * block_bytes * 8


@pytest.mark.parametrize("file_type", ["q3_k_m", "q4_k_m", "q5_k_s", "q8_0"])
def test_ledger_counts_every_tensor_at_its_type_exactly(gpt2, llama, file_type):
    pytest.importorskip("gguf", reason="gguf (dev extra) not installed")
    for model in (gpt2, llama):
        types = _expected_types(model, file_type)
        modules = dict(model.named_modules())
        weights = {id(modules[n].weight): (tuple(weight_matrix(modules[n]).shape), t) for n, t in types.items()}
        expected = 0
        for p in {id(p): p for p in model.parameters()}.values():
            expected += _ggml_bits(*weights[id(p)]) if id(p) in weights else 16 * p.numel()
        ledger = ledger_for(model, FORMATS.get(f"ftype_{file_type}").configure())
        assert ledger.total_bits == expected
        row = ledger.to_row()
        census = json.loads(row["stored_types"])
        assert sum(census.values()) == ledger.n_quantized
        assert census == {t: sum(modules[n].weight.numel() for n in types if types[n] == t)
                          for t in sorted(set(types.values()))}
        assert "token embedding" in row["quant_scope"] and "output head" in row["quant_scope"]
    # Q4_K_M on the llama: 4.5-bit base, q6_k (6.5625 bits) on lm_head and 4 of 8 attn_v / ffn_down
    ledger = ledger_for(llama, FORMATS.get("ftype_q4_k_m").configure())
    q6 = 64 * 256 + 4 * (64 * 256 + 256 * 512)
    assert ledger.payload_bits + ledger.constant_bits == 4.5 * (ledger.n_quantized - q6) + 6.5625 * q6


def test_quantize_and_snapshot_restore_embeddings_and_head_bitwise():
    llama = _llama(n_layers=2)  # n = 2: "more bits" (q6_k) for attn_v/ffn_down of layer 1 only (i >= 7n/8)
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    config = FORMATS.get("ftype_q4_k_m").configure()
    with WeightSnapshot(llama, recipes=True):
        ledger = quantize_model(llama, config, progress=False)
        params = dict(llama.named_parameters())
        # each tensor is the per-tensor type's fake quantization of the original
        for name, kind in [("model.embed_tokens", "q4_k"), ("lm_head", "q6_k"),
                           ("model.layers.0.self_attn.v_proj", "q4_k"), ("model.layers.1.self_attn.v_proj", "q6_k"),
                           ("model.layers.0.mlp.down_proj", "q4_k"), ("model.layers.1.mlp.down_proj", "q6_k"),
                           ("model.layers.1.mlp.up_proj", "q4_k")]:
            assert torch.equal(params[f"{name}.weight"], fake_quantize(before[f"{name}.weight"], kind)), name
        assert torch.equal(params["model.norm.weight"], before["model.norm.weight"])  # norms untouched
        assert ledger.to_row()["quant_scope"] == FORMATS.get("ftype_q4_k_m").quant_scope
    for name, p in llama.named_parameters():
        assert torch.equal(p.view(torch.int32), before[name].view(torch.int32)), name
    # the default snapshot keeps only the filter's linears; recipes=True adds the embedding and head
    assert WeightSnapshot(llama, recipes=True).n_tensors == WeightSnapshot(llama).n_tensors + 2


def test_imatrix_goes_to_the_types_that_take_one_and_the_tied_head():
    gpt2 = _gpt2(n_layer=1)
    from kscale.quant.imatrix import EVERY_LINEAR, imatrix_for, importance_matrices

    calib = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    config = FORMATS.get("ftype_q4_k_m").configure(imatrix=True)
    imatrices = imatrix_for(gpt2, config, calib, None)
    assert imatrices.keys() == importance_matrices(gpt2, calib, EVERY_LINEAR).keys() >= {"lm_head"}
    wte = gpt2.transformer.wte.weight.detach().clone()
    with WeightSnapshot(gpt2, recipes=True):
        quantize_model(gpt2, config, imatrices=imatrices, progress=False)
        # the tied tensor is stored once as token_embd at q6_k, weighted by the head's inputs
        expected = fake_quantize(wte, FORMATS.get("q6_k").configure(imatrix=True), imatrix=imatrices["lm_head"])
        assert torch.equal(gpt2.transformer.wte.weight, expected)
        assert not torch.equal(expected, fake_quantize(wte, "q6_k"))  # the imatrix mattered
    assert torch.equal(gpt2.transformer.wte.weight, wte)
    with pytest.raises(ValueError, match="takes no option 'imatrix'"):
        FORMATS.get("ftype_q8_0").configure(imatrix=True)


def test_one_tensor_entry_points_explain_the_recipe():
    with pytest.raises(ValueError, match="per-tensor recipe.*base type q4_k$"):
        fake_quantize(torch.randn(4, 256), "ftype_q4_k_m")
    with pytest.raises(ValueError, match="base type q8_0$"):
        pack(torch.randn(4, 256), "ftype_q8_0")
    with pytest.raises(KeyError, match="Did you mean"):
        FORMATS.get("ftype_q4_k_n")


@pytest.mark.parametrize("name", ["ftype_q4_k_m", pytest.param("ftype_q3_k_l", marks=pytest.mark.slow)])
def test_export_writes_each_tensor_at_its_recipe_type(gpt2, tmp_path, name):
    gguf = pytest.importorskip("gguf", reason="gguf (dev extra) not installed")
    from kscale.export import export_model, file_tensor_bytes

    for model in (gpt2, _llama(n_layers=2)):
        out = tmp_path / f"{type(model).__name__}.gguf"
        summary = export_model(model, name, out)
        assert 8 * file_tensor_bytes(out) == summary.total_bits == ledger_for(
            model, FORMATS.get(name).configure()).total_bits
        stored = {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(str(out)).tensors}
        for module, kind in _expected_types(model, name.removeprefix("ftype_")).items():
            assert stored[f"{module}.weight"] == kind, module
        assert len(stored) == len(list(model.parameters()))  # tied pair once


@pytest.mark.slow
def test_two_cell_sweep_with_a_recipe_format(tmp_path):
    """Baseline + ftype_q4_k_m on a GPT-2 of width 32 (q4_k falls back to q5_0, q6_k to q8_0)."""
    from hydra import compose, initialize_config_dir

    from kscale.config import build_plan
    from kscale.results import load_results
    from kscale.sweep import run_plan

    model_dir = tmp_path / "gpt2-w32"
    model = _gpt2(n_embd=32, vocab=50257, n_positions=64)
    model.config.bos_token_id = model.config.eos_token_id = 50256
    model.save_pretrained(model_dir)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TINY_GPT2 / f, model_dir / f)
    overrides = ["model=gpt2", "model.sizes=[small]", f"model.local_paths.small={model_dir}", "eval=paper",
                 "eval.kl=false", "eval.zeroshot=[]",
                 "eval.perplexity=[{dataset:wikitext2,protocol:gptq,seqlen:32,max_tokens:256}]",
                 "format=ftype_q4_k_m", "bits=[16,4]", f"results_dir={tmp_path}", "name=recipe", "progress=false"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=overrides, return_hydra_config=True)
    run_plan(build_plan(cfg))
    df = load_results(tmp_path / "recipe")
    assert sorted(df["status"]) == ["ok", "ok"]
    row = df[df["format"] == "ftype_q4_k_m"].iloc[0]
    # rows of 32 and 128: q4_k -> q5_0; q6_k (tied wte = head, layer 1's attn_qkv and ffn_down) -> q8_0
    assert json.loads(row["stored_types"]) == {"q5_0": 2 * (32 * 32 + 128 * 32) + 96 * 32 + 32 * 128,
                                             "q8_0": 50257 * 32 + 96 * 32 + 32 * 128}
    assert row["total_bits"] == ledger_for(model, FORMATS.get("ftype_q4_k_m").configure()).total_bits
    assert "output head" in row["quant_scope"]
    base = df[df["format"] != "ftype_q4_k_m"].iloc[0]
    assert row["ppl_wikitext2"] != base["ppl_wikitext2"] and "output head" not in str(base["quant_scope"])
