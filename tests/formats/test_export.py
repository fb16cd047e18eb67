"""``python -m kscale.export``: every bit the ledger counts is in the file, and the bytes are right.

For every registered format: 8 x the tensor bytes read back from the written file equals the
ledger's ``total_bits`` for the same model and format, exactly. The GGUF files are also read
back with ``gguf`` and their quantized tensors dequantized: they must equal kscale's fake
quantization (so the bytes are the format's, not just the right number of them).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from kscale.export import export_model, file_tensor_bytes, main

pytest.importorskip("kscale.quant.formats", reason="the FORMATS registry (issue 18 section 1) has not landed")
from kscale.quant.formats import FORMATS, fake_quantize  # noqa: E402
from kscale.quant.ledger import ledger_for  # noqa: E402
from kscale.quant.modules import quantizable_modules, weight_matrix  # noqa: E402

OPTIONS = {"blockwise": {"bits": 4, "dtype": "nf", "blocksize": 64}}


@pytest.fixture(scope="module")
def model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=96, n_positions=16, n_embd=64, n_layer=1, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def _suffix(name: str) -> str:
    return ".gguf" if name.startswith(("q", "iq", "gguf_")) else ".safetensors"


FAST = ["blockwise", "mxfp4", "nvfp4", "gguf_mxfp4", "q4_0", "q8_0"]


@pytest.mark.parametrize("name", FAST)
def test_file_bytes_equal_ledger_total_bits(model, tmp_path, name):
    pytest.importorskip("gguf", reason="gguf (dev extra) not installed")
    out = tmp_path / f"m{_suffix(name)}"
    before = [p.detach().clone() for p in model.parameters()]
    summary = export_model(model, name, out, options=OPTIONS.get(name))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights untouched
    total = ledger_for(model, FORMATS.get(name).configure(**OPTIONS.get(name, {}))).total_bits
    assert 8 * file_tensor_bytes(out) == total == summary.total_bits
    # tied wte/lm_head once; every parameter present
    assert len(summary.types) == len(list(model.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(FORMATS.names()) - set(FAST)))
def test_file_bytes_equal_ledger_total_bits_every_other_format(model, tmp_path, name):
    test_file_bytes_equal_ledger_total_bits(model, tmp_path, name)


def test_gguf_tensors_read_back_as_the_quantized_values(model, tmp_path):
    gguf = pytest.importorskip("gguf", reason="gguf (dev extra) not installed")
    from gguf.quants import dequantize

    out = tmp_path / "m.gguf"
    summary = export_model(model, "q4_k", out)
    reader = gguf.GGUFReader(str(out))
    stored = {t.name: t for t in reader.tensors}
    # 64-wide rows cannot hold q4_k's 256-blocks: llama.cpp's fallback q5_0; the 256-wide c_proj keeps q4_k
    assert stored["transformer.h.0.mlp.c_proj.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_K
    assert stored["transformer.h.0.attn.c_attn.weight"].tensor_type == gguf.GGMLQuantizationType.Q5_0
    assert summary.types["transformer.wte.weight"] == "f16"
    for name, module in quantizable_modules(model).items():
        t = stored[f"{name}.weight"]
        w = weight_matrix(module).detach().float()
        values = torch.from_numpy(dequantize(np.asarray(t.data), t.tensor_type).copy()).reshape(w.shape)
        assert torch.equal(values, fake_quantize(w, "q4_k")), name


def test_safetensors_holds_packed_codes_and_f16_rest(model, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "m.safetensors"
    export_model(model, "mxfp4", out)
    arrays = load_file(str(out))
    packed = arrays["transformer.h.0.mlp.c_proj.weight"]
    assert packed.dtype == np.uint8 and packed.size == 64 * 256 * 17 // 32  # 4.25 bits per value
    assert arrays["transformer.wte.weight"].dtype == np.float16
    assert "lm_head.weight" not in arrays  # tied to wte: stored once


def test_cli_and_its_errors(model, tmp_path, capsys, monkeypatch):
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    out = tmp_path / "cli.safetensors"
    assert main(["--model", str(model_dir), "--format", "blockwise", "--option", "bits=4",
                 "--option", "blocksize=64", "--out", str(out)]) == 0
    assert "= the ledger's total_bits" in capsys.readouterr().out
    assert main(["--model", str(tmp_path / "nowhere"), "--format", "q4_0", "--out", str(out)]) == 2
    assert "no config.json" in capsys.readouterr().out
    assert main(["--model", str(model_dir), "--format", "q4_kk", "--out", str(out)]) == 2
    assert "Did you mean" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "gguf", None)  # gguf not installed
    assert main(["--model", str(model_dir), "--format", "q4_0", "--out", str(tmp_path / "x.gguf")]) == 2
    assert "pip install gguf" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not a readable"):
        file_tensor_bytes(model_dir / "config.json")


def test_imatrix_export_stores_the_importance_weighted_bytes(model, tmp_path):
    gguf = pytest.importorskip("gguf", reason="gguf (dev extra) not installed")
    from kscale.quant.gguf import quantize_gguf

    importance_matrices = pytest.importorskip("kscale.quant.imatrix").importance_matrices

    calib = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="needs calibration windows"):
        export_model(model, "q4_k", tmp_path / "x.gguf", options={"imatrix": True})
    out = tmp_path / "im.gguf"
    summary = export_model(model, "q4_k", out, options={"imatrix": True}, calibration=calib)
    assert summary.matches_ledger
    name = "transformer.h.0.mlp.c_proj"  # rows of 256: q4_k itself, which takes the imatrix
    w = weight_matrix(quantizable_modules(model)[name]).detach().float().contiguous()
    expected = quantize_gguf(w, "q4_k", importance_matrices(model, calib)[name])
    stored = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}[f"{name}.weight"]
    assert np.array_equal(np.asarray(stored.data).reshape(-1), expected.numpy().reshape(-1))
    assert not np.array_equal(expected.numpy(), quantize_gguf(w, "q4_k").numpy())  # the imatrix mattered


@pytest.mark.slow
def test_cli_calibration_path_on_tiny_gpt2(data_dir, tmp_path, capsys):
    """--calib draws windows with the model's own tokenizer from the shared WikiText-2 text."""
    pytest.importorskip("gguf", reason="gguf (dev extra) not installed")
    model_dir = data_dir / "models" / "tiny-gpt2"
    if not model_dir.exists():
        pytest.skip("shared tiny-gpt2 not available")
    out = tmp_path / "tiny.gguf"
    assert main(["--model", str(model_dir), "--format", "q4_0", "--option", "imatrix=true", "--calib", "wikitext2",
                 "--calib-samples", "2", "--calib-seqlen", "32", "--out", str(out)]) == 0
    assert "= the ledger's total_bits" in capsys.readouterr().out
