"""Paired per-token statistics of a model against its own 16-bit model, with window-clustered SEs.

Why paired: a quantized model and its 16-bit model are scored on the same tokens, so most of
the per-token noise (hard tokens are hard for both) cancels in the difference. llama.cpp
measures Q6_K's PPL on LLaMA-3-8B as 6.2534 ± 0.0381 while its paired difference to f16 is
0.0217 ± 0.0019. A study that compares 6- with 8-bit cells needs the paired numbers.

Definitions follow llama.cpp's ``llama-perplexity --kl-divergence`` report
(``tools/perplexity/README.md``), with these differences:

* Standard errors are *batch means over windows* (a cluster-robust SE of a ratio mean):
  tokens of one window share their context and are correlated, so with per-window sums
  ``S_w`` and counts ``n_w`` the SE of ``m = ΣS_w / Σn_w`` is
  ``sqrt(W/(W-1) · Σ(S_w - m·n_w)²) / Σn_w``. llama.cpp treats tokens as independent
  (its SEs are smaller when tokens are correlated). A single window has no SE (NaN).
* ``dnll`` (mean per-token NLL difference) *is* ``ln(PPL_q / PPL_16)`` on the same tokens;
  llama.cpp prints the ratio and its log with error propagation, kscale reports both columns
  from the one paired mean and its SE.
* KL uses the reference's top-k log-probabilities plus its tail mass (see
  :mod:`kscale.evaluate.reference`), not the full vocabulary: the reported mean is a lower
  bound, and ``kl_<data>_tail`` is an upper bound on how far below the exact mean it can be.
* Percentiles are numpy's linear interpolation over all scored tokens (llama.cpp picks the
  sorted element at the fraction).

Columns, for a perplexity key ``d`` (all over the scored tokens of the windows used):
``dnll_d, dnll_d_se, dnll_d_unpaired_se, ln_ppl_ratio_d, ln_ppl_ratio_d_se``;
``kl_d, kl_d_se, kl_d_median, kl_d_p90, kl_d_p99, kl_d_max, kl_d_tail``;
``p_d, p_d_se`` (probability of the correct token), ``dp_d, dp_d_se, dp_d_rms, dp_d_rms_se``,
``dp_d_min, dp_d_p1, dp_d_p10, dp_d_median, dp_d_p90, dp_d_p99, dp_d_max`` (Δp = p_q − p_16);
``top1_d, top1_d_se`` (same top-1 token as the 16-bit model).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: percentiles of Δp reported (llama.cpp reports these and a few more)
DP_PERCENTILES: tuple[tuple[str, float], ...] = (("p1", 1.0), ("p10", 10.0), ("median", 50.0), ("p90", 90.0),
                                                 ("p99", 99.0))
KL_PERCENTILES: tuple[tuple[str, float], ...] = (("median", 50.0), ("p90", 90.0), ("p99", 99.0))


def cluster_mean_se(values: np.ndarray, starts: np.ndarray) -> tuple[float, float]:
    """Mean of ``values`` and its batch-means SE over windows; ``starts`` are the first index of
    each window's tokens in ``values`` (ascending, first 0). NaN SE with fewer than 2 windows."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    sums = np.add.reduceat(values, starts)
    counts = np.diff(np.append(starts, n)).astype(np.float64)
    mean = float(sums.sum() / n)
    w = len(sums)
    if w < 2:
        return mean, math.nan
    resid = sums - mean * counts
    return mean, float(math.sqrt(w / (w - 1) * float(np.dot(resid, resid))) / n)


def window_starts(offsets: np.ndarray, used: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Token indices of the windows ``used`` (in that order) and where each window starts in them.

    ``offsets[i]`` is window ``i``'s first scored token in the spec's token arrays."""
    used = np.asarray(used, dtype=np.int64)
    lens = offsets[used + 1] - offsets[used]
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    idx = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in used]) if len(used) else np.zeros(0, np.int64)
    return idx.astype(np.int64), starts


def absolute_metrics(key: str, nll: np.ndarray, starts: np.ndarray, n_bytes: float) -> dict[str, float]:
    """``nll_<key>_se``, ``ppl_<key>_se`` (delta method) and ``bpb_<key>_se``."""
    mean, se = cluster_mean_se(nll, starts)
    ppl = math.exp(mean) if mean < 700 else math.inf
    return {f"nll_{key}_se": se, f"ppl_{key}_se": ppl * se if math.isfinite(ppl) else math.nan,
            f"bpb_{key}_se": se * len(nll) / math.log(2) / n_bytes if n_bytes else math.nan}


def paired_metrics(key: str, nll: np.ndarray, ref_nll: np.ndarray, starts: np.ndarray, *,
                   same_top1: np.ndarray | None = None, kl: np.ndarray | None = None,
                   kl_tail: np.ndarray | None = None) -> dict[str, float]:
    """Every paired column of one perplexity key (see the module docstring).

    All arrays are per scored token, aligned, over the windows used; ``starts`` marks the
    windows. ``same_top1``/``kl``/``kl_tail`` are None when the spec measures no KL."""
    nll = np.asarray(nll, dtype=np.float64)
    ref_nll = np.asarray(ref_nll, dtype=np.float64)
    out: dict[str, float] = {}
    d, d_se = cluster_mean_se(nll - ref_nll, starts)
    _, se_q = cluster_mean_se(nll, starts)
    _, se_16 = cluster_mean_se(ref_nll, starts)
    out.update({f"dnll_{key}": d, f"dnll_{key}_se": d_se, f"dnll_{key}_unpaired_se": math.hypot(se_q, se_16),
                f"ln_ppl_ratio_{key}": d, f"ln_ppl_ratio_{key}_se": d_se})
    p = np.exp(-nll)
    dp = p - np.exp(-ref_nll)
    out[f"p_{key}"], out[f"p_{key}_se"] = cluster_mean_se(p, starts)
    out[f"dp_{key}"], out[f"dp_{key}_se"] = cluster_mean_se(dp, starts)
    msq, msq_se = cluster_mean_se(dp * dp, starts)
    rms = math.sqrt(msq)
    out[f"dp_{key}_rms"] = rms
    # delta method: d sqrt(x) = dx / (2 sqrt(x)); zero spread when Δp is identically zero
    out[f"dp_{key}_rms_se"] = msq_se / (2 * rms) if rms > 0 else (0.0 if msq_se == 0 else math.nan)
    out[f"dp_{key}_min"] = float(dp.min())
    for name, q in DP_PERCENTILES:
        out[f"dp_{key}_{name}"] = float(np.percentile(dp, q))
    out[f"dp_{key}_max"] = float(dp.max())
    if same_top1 is not None:
        out[f"top1_{key}"], out[f"top1_{key}_se"] = cluster_mean_se(same_top1.astype(np.float64), starts)
    if kl is not None:
        kl = np.asarray(kl, dtype=np.float64)
        out[f"kl_{key}"], out[f"kl_{key}_se"] = cluster_mean_se(kl, starts)
        for name, q in KL_PERCENTILES:
            out[f"kl_{key}_{name}"] = float(np.percentile(kl, q))
        out[f"kl_{key}_max"] = float(kl.max())
        out[f"kl_{key}_tail"] = float(np.mean(kl_tail)) if kl_tail is not None else 0.0
    return out


# -------------------------------------------------------------------- zero-shot

def mean_se(x: np.ndarray) -> float:
    """Sample SD (n-1) / sqrt(n): lm-eval's ``mean_stderr`` (items are independent)."""
    n = len(x)
    return float(np.std(x, ddof=1) / math.sqrt(n)) if n >= 2 else math.nan


def flip_metrics(task: str, correct: np.ndarray, ref_correct: np.ndarray) -> dict[str, float]:
    """``flips_<task>`` (share of items whose correctness changed; Dutta et al. 2024,
    "Accuracy is not all you need") with its SE, and the accuracy difference to the 16-bit
    model ``dacc_<task>`` with its paired SE (per-item differences)."""
    diff = np.asarray(correct, dtype=np.float64) - np.asarray(ref_correct, dtype=np.float64)
    flips = np.abs(diff)
    return {f"flips_{task}": float(flips.mean()), f"flips_{task}_se": mean_se(flips),
            f"dacc_{task}": float(diff.mean()), f"dacc_{task}_se": mean_se(diff)}
