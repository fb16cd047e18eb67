"""The CUDA checks of benchmarks/gpu_check.sh as tests (marker ``gpu``; skipped without CUDA),
plus the script's own no-CUDA path, which runs everywhere."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit path")
def test_gpu_check_script_exits_2_with_a_message_without_cuda():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "nothing was run" in proc.stderr


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["int", "float", "dynamic", "quantile", "nf"])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.float16])
def test_cuda_fake_quant_equals_cpu_bitwise(dtype, wdtype):
    from kscale.quant import QuantSpec, fake_quantize

    torch.manual_seed(0)
    w = (torch.randn(256, 512) * torch.linspace(0.1, 3.0, 512)).to(wdtype)
    for bits in (3, 4, 8):
        for blocksize, centered in ((64, False), (64, True), (None, False)):
            try:
                spec = QuantSpec(bits=bits, dtype=dtype, blocksize=blocksize, centered=centered)
            except ValueError:
                continue
            assert torch.equal(fake_quantize(w, spec), fake_quantize(w.cuda(), spec).cpu()), spec


@pytest.mark.gpu
@needs_cuda
def test_cuda_gptq_layer_matches_cpu_and_beats_rtn():
    from kscale.quant import QuantSpec, quantize_matrix
    from kscale.quant.gptq import gptq_quantize_matrix

    torch.manual_seed(1)
    d = 256
    W, mix = torch.randn(d, d) / d**0.5, torch.randn(d, d) / d**0.5
    X, Xh = torch.randn(2048, d) @ mix, torch.randn(512, d) @ mix
    H = 2 * X.T @ X / X.shape[0]
    spec = QuantSpec(bits=3, dtype="int", blocksize=128)
    cpu = gptq_quantize_matrix(W, H, spec)
    gpu = gptq_quantize_matrix(W.cuda(), H.cuda(), spec)
    assert abs(gpu.loss - cpu.loss) <= 1e-3 * abs(cpu.loss)
    err = lambda Q: float(((Xh @ (Q.cpu().float() - W).T) ** 2).mean())  # noqa: E731
    assert err(gpu.Q) < err(quantize_matrix(W.clone(), spec))


@pytest.mark.gpu
@needs_cuda
def test_cuda_linear4bit_crosscheck(tmp_path):
    pytest.importorskip("bitsandbytes")
    from torch import nn

    from kscale.crosscheck import crosscheck
    from kscale.quant import QuantSpec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 64)).cuda()
    x = torch.randn(32, 128, device="cuda")
    ev = lambda m: {"nll_x": float(m(x).float().pow(2).mean())}  # noqa: E731
    res = crosscheck(model, QuantSpec(bits=4, dtype="nf", blocksize=64, scale_bits=32), evaluate=ev)
    assert res.kernel == "bnb-nf4" and abs(res.delta("nll_x")) <= 1e-4 * abs(res.fake["nll_x"])
