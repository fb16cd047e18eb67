"""The MX/NV formats store a matrix whose rows are not whole blocks in F16, the rule the GGUF types
follow (llama.cpp's tensor_type_fallback ends at F16): left unquantized, counted and packed at 16
bits per weight, exported as F16, and counted as ``f16`` in the row's ``stored_types``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kscale.quant import fake_quantize, pack
from kscale.quant.formats import FORMATS
from kscale.quant.ledger import ledger_for
from kscale.quant.mx import MX_TYPES, fake_quantize_mx

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(MX_TYPES))
def test_rows_that_are_not_whole_blocks_are_stored_in_f16(name):
    block = MX_TYPES[name].block_values
    n_per_row = block + block // 2  # 48 for the 32-value types, 24 for nvfp4, 96 for gguf_nvfp4
    w = torch.randn(5, n_per_row, generator=torch.Generator().manual_seed(0))
    fmt = FORMATS.get(name)
    config = fmt.configure()
    assert torch.equal(fake_quantize(w, name), w)  # unquantized, like every other 16-bit parameter
    cost = fmt.tensor_cost(tuple(w.shape), config)
    assert (cost.payload_bits, cost.constant_bits, cost.other_bits) == (0, 0, 16 * w.numel())
    data = pack(w, name)
    assert len(data) == 2 * w.numel()
    assert torch.equal(torch.frombuffer(bytearray(data), dtype=torch.float16).reshape(w.shape), w.half())
    assert fmt.stored_type(tuple(w.shape), config) == "f16"


def test_mxfp4_rows_of_48_f16_and_rows_of_64_quantized_as_fake_quantize_mx():
    w48 = torch.randn(6, 48, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fake_quantize(w48, "mxfp4"), w48)
    assert len(pack(w48, "mxfp4")) == 2 * 6 * 48
    w64 = torch.randn(6, 64, generator=torch.Generator().manual_seed(2))
    out = fake_quantize(w64, "mxfp4")
    assert torch.equal(out, fake_quantize_mx(w64, "mxfp4")) and not torch.equal(out, w64)
    # 6 x 64 values: 4-bit elements + one 8-bit E8M0 scale per 32 = 4.25 bits each
    assert len(pack(w64, "mxfp4")) * 8 == 6 * 64 * 4 + 6 * 2 * 8


def test_ledger_census_and_scope_count_the_f16_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(48, 8), torch.nn.Linear(8, 64), torch.nn.Linear(64, 4))
    row = ledger_for(model, FORMATS.get("mxfp4").configure()).to_row()
    # rows of 48 and 8 (not multiples of 32) in F16; the 4 x 64 matrix in mxfp4
    assert json.loads(row["stored_types"]) == {"f16": 8 * 48 + 64 * 8, "mxfp4": 4 * 64}
    assert row["other_bits"] == 16 * (8 * 48 + 64 * 8)
    assert row["payload_bits"] + row["constant_bits"] == 4 * 64 * 4 + 4 * 2 * 8
    assert "2 of 3 matrices stored in F16" in row["quant_scope"]
    blocked = ledger_for(torch.nn.Sequential(torch.nn.Linear(64, 8)), FORMATS.get("mxfp4").configure()).to_row()
    assert json.loads(blocked["stored_types"]) == {"mxfp4": 8 * 64} and "quant_scope" not in blocked


def test_export_writes_f16_for_the_matrices_stored_in_f16(tmp_path):
    from kscale.export import export_model

    model = torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.Linear(64, 8))
    summary = export_model(model, "mxfp4", tmp_path / "m.safetensors")
    assert summary.matches_ledger
    assert summary.types["0.weight"] == "f16" and summary.types["1.weight"] == "mxfp4"
    pytest.importorskip("gguf")
    summary = export_model(model, "gguf_mxfp4", tmp_path / "m.gguf")
    assert summary.matches_ledger
    assert summary.types["0.weight"] == "f16" and summary.types["1.weight"] == "mxfp4"


@pytest.mark.slow
def test_toy_sweep_cell_mxfp4_on_16_wide_rows_ends_ok(tmp_path):
    # L2-d16: c_attn, attn.c_proj, c_fc have rows of 16 (F16), mlp.c_proj rows of 64 (mxfp4)
    args = ["model.sizes=[L2-d16]", "model.provider_options.tokens_per_param=2",
            "eval.perplexity=[{dataset:toy,max_tokens:1024}]", "report=false", "progress=false",
            "format=mxfp4", "method_options.rtn={}", f"results_dir={tmp_path}", "name=mxf16"]
    proc = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=ROOT,
                          env=dict(os.environ, HYDRA_FULL_ERROR="0"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from kscale.results import load_results

    df = load_results(tmp_path / "mxf16")
    assert (df["status"] == "ok").all() and len(df) == 2
    row = df[df["format"] == "mxfp4"].iloc[0]
    per_layer_f16, per_layer_mx = 3 * 16 * 16 + 16 * 16 + 64 * 16, 16 * 64
    assert json.loads(row["stored_types"]) == {"f16": 2 * per_layer_f16, "mxfp4": 2 * per_layer_mx}
    assert row["bits_per_param"] == pytest.approx((16 * per_layer_f16 + 4.25 * per_layer_mx)
                                                  / (per_layer_f16 + per_layer_mx), abs=0)
    assert "stored in F16" in row["quant_scope"]
