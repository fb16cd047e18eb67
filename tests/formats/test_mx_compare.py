"""The OCP-vs-ggml comparison the README quotes, on the shared tiny GPT-2's weights."""
from __future__ import annotations

import pytest
import torch

from kscale.quant.mx.compare import compare_families, main, model_weights


def test_tiny_gpt2_family_differences(data_dir, capsys):
    model = data_dir / "models" / "tiny-gpt2"
    if not model.exists():
        pytest.skip("shared tiny-gpt2 not available")
    w = model_weights(model)
    assert w.shape[1] == 64 and w.numel() > 100_000
    mx, nv = compare_families(w)
    # float32 weights: ggml's MXFP4 differs only on exact ties and on maxima a few ulps below 2^k
    assert mx["differ"] < 1e-3 and abs(mx["rel_rms_ocp"] - mx["rel_rms_ggml"]) < 1e-3
    # NVFP4: ggml's absolute UE4M3 scales are subnormal at sigma 0.02 (amax/6 < 2^-6): coarse
    assert nv["differ"] > 0.5 and nv["rel_rms_ggml"] > nv["rel_rms_ocp"]
    bf16 = compare_families(w.to(torch.bfloat16).float())[0]
    assert bf16["differ"] > mx["differ"]  # bf16 values land on E2M1 midpoints far more often
    main([str(model)])
    assert "values rounded differently" in capsys.readouterr().out


def test_model_weights_needs_safetensors(tmp_path):
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        model_weights(tmp_path)
