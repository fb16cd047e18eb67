#!/usr/bin/env bash
# One-GPU check of kscale's CUDA path, < 5 minutes on one GPU:
#   1. fake quantization on CUDA equals CPU bit for bit, for every data type in kscale.quant.DTYPES
#      (3/4/8 bits where the type allows them, absmax and centered blocks, per-row), fp32 and fp16;
#   2. GPTQ on one 1024x1024 layer on CUDA: the same loss as on CPU (within 1e-3 relative) and a
#      lower held-out output error than round-to-nearest;
#   3. a 2-cell sweep (16-bit baseline + nf4) of the tiny GPT-2 in the shared data with
#      model.device=cuda model.dtype=auto, and the same on CPU: the rows must agree;
#   4. prints the quantization and evaluation throughput ratios (CPU time / CUDA time).
# Exit status: 0 all checks passed, 1 a check failed, 2 no CUDA device (nothing was run).
#
#   bash benchmarks/gpu_check.sh                 # PYTHON=... to use another interpreter
# The matching pytest tests are marked `gpu` (tests/plan/test_gpu_checks.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False):" \
       "this script checks the CUDA path and needs one GPU; nothing was run." >&2
  exit 2
fi

export KSCALE_DATA_DIR="${KSCALE_DATA_DIR:-$("$PY" -c 'from kscale.paths import default_data_dir; print(default_data_dir())')}"
if [ ! -f "$KSCALE_DATA_DIR/models/tiny-gpt2/config.json" ]; then
  echo "gpu_check: shared data not found at $KSCALE_DATA_DIR (needs models/tiny-gpt2 and wikitext-2-raw);" \
       "set KSCALE_DATA_DIR" >&2
  exit 1
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export KSCALE_CACHE_DIR="$WORK/cache" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" - <<'EOF'
import sys
import time

import torch

from kscale.quant import DTYPES, QuantSpec, fake_quantize

fail = []
torch.manual_seed(0)
w32 = torch.randn(512, 1024) * torch.linspace(0.1, 3.0, 1024)  # uneven columns: real block ranges
n_specs = 0
for dtype in DTYPES.names():
    for bits in (3, 4, 8):
        for blocksize, centered in ((64, False), (64, True), (None, False)):
            try:
                spec = QuantSpec(bits=bits, dtype=dtype, blocksize=blocksize, centered=centered)
            except ValueError:
                continue  # the type does not exist at this width (e.g. nf3)
            for w in (w32, w32.half()):
                cpu = fake_quantize(w, spec)
                gpu = fake_quantize(w.cuda(), spec).cpu()
                n_specs += 1
                if cpu.dtype != gpu.dtype or not torch.equal(cpu, gpu):
                    diff = (cpu.float() - gpu.float()).abs()
                    fail.append(f"{spec.label if hasattr(spec, 'label') else spec} {w.dtype}: "
                                f"{int((diff > 0).sum())} values differ (max {float(diff.max()):.3g})")
print(f"[1] fake-quant CUDA == CPU bitwise: {n_specs - len(fail)}/{n_specs} (dtype, bits, block, weight dtype) cases")
for f in fail:
    print("    MISMATCH", f)


def timed(fn, reps=5):
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


big = torch.randn(4096, 4096)
for dtype in ("int", "nf"):
    spec = QuantSpec(bits=4, dtype=dtype, blocksize=64)
    t_cpu = timed(lambda: fake_quantize(big, spec), reps=2)
    g = big.cuda()
    t_gpu = timed(lambda: fake_quantize(g, spec))
    print(f"[4] quant throughput {dtype}4 B=64 4096x4096: CPU {t_cpu * 1e3:.1f} ms, CUDA {t_gpu * 1e3:.2f} ms, "
          f"ratio {t_cpu / t_gpu:.1f}x")

# --- GPTQ on one layer
from kscale.quant.gptq import gptq_quantize_matrix
from kscale.quant import quantize_matrix

torch.manual_seed(1)
d = 1024
W = torch.randn(d, d) / d**0.5
mix = torch.randn(d, d) / d**0.5
X = torch.randn(4096, d) @ mix  # correlated inputs, where GPTQ's error feedback matters
Xh = torch.randn(1024, d) @ mix
H = 2 * X.T @ X / X.shape[0]
spec = QuantSpec(bits=3, dtype="int", blocksize=128)
t = time.perf_counter(); r_cpu = gptq_quantize_matrix(W, H, spec); t_cpu = time.perf_counter() - t
torch.cuda.synchronize(); t = time.perf_counter()
r_gpu = gptq_quantize_matrix(W.cuda(), H.cuda(), spec); torch.cuda.synchronize(); t_gpu = time.perf_counter() - t
err = lambda Q: float(((Xh @ (Q.cpu().float() - W).T) ** 2).mean())  # noqa: E731
e_gptq, e_rtn = err(r_gpu.Q), err(quantize_matrix(W.clone(), spec))
rel = abs(r_gpu.loss - r_cpu.loss) / max(abs(r_cpu.loss), 1e-12)
print(f"[2] GPTQ 3-bit B=128 on a {d}x{d} layer: loss CUDA {r_gpu.loss:.6g} vs CPU {r_cpu.loss:.6g} "
      f"(rel {rel:.2e}); held-out error GPTQ/RTN {e_gptq / e_rtn:.3f}; CPU {t_cpu:.2f} s, CUDA {t_gpu:.2f} s")
if not rel < 1e-3:
    fail.append(f"GPTQ loss differs between CUDA and CPU by {rel:.2e} (> 1e-3)")
if not e_gptq < e_rtn:
    fail.append(f"GPTQ held-out error {e_gptq:.4g} is not below RTN's {e_rtn:.4g}")
sys.exit(1 if fail else 0)
EOF
echo "[1-2] ok"

TINY="$KSCALE_DATA_DIR/models/tiny-gpt2"
COMMON=(model=gpt2 "model.sizes=[small]" "model.local_paths={small:$TINY}" eval=wikitext2
        "eval.perplexity=[{dataset:wikitext2,seqlen:1024,max_tokens:16384}]" bits=4,16 dtype=nf
        report=false progress=false "results_dir=$WORK/res")
"$PY" run_sweep.py "${COMMON[@]}" name=cuda model.device=cuda model.dtype=auto > "$WORK/cuda.log" 2>&1 \
  || { echo "gpu_check: the CUDA sweep failed:"; tail -40 "$WORK/cuda.log"; exit 1; }
"$PY" run_sweep.py "${COMMON[@]}" name=cpu model.device=cpu model.dtype=float32 > "$WORK/cpu.log" 2>&1 \
  || { echo "gpu_check: the CPU sweep failed:"; tail -40 "$WORK/cpu.log"; exit 1; }

"$PY" - "$WORK/res" <<'EOF'
import sys

from kscale.results import load_results

res = sys.argv[1]
cuda, cpu = load_results(f"{res}/cuda"), load_results(f"{res}/cpu")
ok = True
if len(cuda) != 2 or len(cpu) != 2 or set(cuda["status"]) != {"ok"}:
    print(f"[3] FAIL: expected 2 ok rows per device; got cuda {list(cuda['status'])}, cpu {list(cpu['status'])}")
    sys.exit(1)
print(f"[3] 2-cell sweep on CUDA: devices {sorted(set(cuda['device']))}, model dtype {sorted(set(cuda['model_dtype']))}")
for bits in (16, 4):
    a = cuda[cuda["bits"] == bits].iloc[0]
    b = cpu[cpu["bits"] == bits].iloc[0]
    # fp16 on CUDA vs fp32 on CPU: the same cell, different arithmetic; a wiring error is far larger
    rel = abs(a["nll_wikitext2"] - b["nll_wikitext2"]) / abs(b["nll_wikitext2"])
    print(f"    bits={bits}: nll CUDA {a['nll_wikitext2']:.5f} vs CPU {b['nll_wikitext2']:.5f} (rel {rel:.1e}); "
          f"eval CPU {b['eval_s']:.2f} s / CUDA {a['eval_s']:.2f} s = {b['eval_s'] / a['eval_s']:.1f}x; "
          f"quant CPU {b['quant_s']:.3f} s / CUDA {a['quant_s']:.3f} s")
    ok &= rel < 1e-2 and a["bits_per_param"] == b["bits_per_param"]
print(f"[4] eval throughput ratio (CPU/CUDA, tiny-gpt2: its 50k-vocab head dominates): "
      f"{cpu['eval_s'].sum() / cuda['eval_s'].sum():.1f}x")
sys.exit(0 if ok else 1)
EOF
echo "gpu_check: all checks passed"
