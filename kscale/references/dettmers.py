"""The k-bit paper's headline findings as statements a results table can be checked against.

Dettmers & Zettlemoyer 2023, "The case for 4-bit precision" (arXiv 2212.09720, ICML 2023);
statements paraphrase ``/work/shared/REFERENCES.md`` §1.3 (numbered as there). Each check reads
``kscale.results.load_results`` rows (status ``ok`` only) and returns ``holds`` / ``fails`` /
``partial`` / ``no data`` with the evidence in words. Curves are drawn as the paper draws them:
best row per model size at each precision, linear interpolation in log total bits
(:func:`kscale.pareto.crossover`). Thresholds that the paper does not state (``tol``) are
arguments, named in the detail.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kscale.references.core import FINDINGS, Finding, FindingResult

SOURCE = "Dettmers & Zettlemoyer 2023, arXiv 2212.09720, via /work/shared/REFERENCES.md §1.3"
MATCH_ON = ("family", "size", "method", "dtype", "bits", "blocksize", "centered", "exponent_bits",
            "scale_bits", "outlier_frac")


def default_metric(df: pd.DataFrame) -> str | None:
    """``nll_wikitext2`` if present, else the first ``nll_*`` column, else ``acc_mean``."""
    if "nll_wikitext2" in df.columns:
        return "nll_wikitext2"
    nll = sorted(c for c in df.columns if c.startswith("nll_"))
    if nll:
        return nll[0]
    return "acc_mean" if "acc_mean" in df.columns else None


def _ok(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    keep = pd.to_numeric(df[metric], errors="coerce").notna()
    if "status" in df.columns:
        keep &= df["status"].astype(str) == "ok"
    return df.loc[keep]


def _lower_better(metric: str) -> bool:
    from kscale.fit.core import higher_is_better  # on use: kscale.references imports without torch

    return not higher_is_better(metric)


def four_bit_optimal(df: pd.DataFrame, metric: str | None = None, *, families: Sequence[str] | None = None
                     ) -> FindingResult:
    """Finding 1: per family, 4-bit beats every other precision over their shared total-bits range."""
    from kscale.pareto import crossover  # on use: kscale.references imports without torch

    name = "four-bit-optimal"
    metric = metric or default_metric(df)
    if metric is None or df.empty:
        return FindingResult(name, "no data", "no metric column")
    data = _ok(df, metric)
    verdicts, words = [], []
    for fam, g in data.groupby("family"):
        if families and fam not in families:
            continue
        others = sorted(int(b) for b in g["bits"].dropna().unique() if int(b) != 4)
        if not (g["bits"] == 4).any() or not others:
            continue
        for k in others:
            c = crossover(g, metric, 4, k)
            if c.status == "no_overlap":
                continue
            verdicts.append(c.status == "always")
            words.append(f"{fam} 4 vs {k}: {'4-bit better throughout' if c.status == 'always' else c.status}")
    if not verdicts:
        return FindingResult(name, "no data", f"needs 4-bit and other precisions over shared total bits ({metric})")
    status = "holds" if all(verdicts) else ("fails" if not any(verdicts) else "partial")
    return FindingResult(name, status, f"{metric}: " + "; ".join(words))


def _paired(df: pd.DataFrame, metric: str, column: str, a, b, where: dict | None = None) -> pd.DataFrame:
    """Rows with ``column == a`` joined to their twin with ``column == b`` (same everything else)."""
    data = _ok(df, metric)
    for k, v in (where or {}).items():
        data = data[data[k] == v]
    keys = [c for c in MATCH_ON if c in data.columns and c != column]
    left = data[data[column] == a][keys + [metric]]
    right = data[data[column] == b][keys + [metric]]
    # NaN keys (a 16-bit row's empty fields) would never join: make them a sentinel
    left, right = left.fillna({k: "-" for k in keys}), right.fillna({k: "-" for k in keys})
    return left.merge(right, on=keys, suffixes=("_a", "_b"))


def _pair_verdict(name: str, pairs: pd.DataFrame, metric: str, what: str, expect_a_better: bool,
                  tol: float = 0.0) -> FindingResult:
    if pairs.empty:
        return FindingResult(name, "no data", f"no matched pairs for {what} ({metric})")
    diff = pairs[f"{metric}_a"] - pairs[f"{metric}_b"]
    if not _lower_better(metric):
        diff = -diff  # diff < 0: a is better
    better = (diff < -tol) if expect_a_better else (diff >= -tol)
    frac = float(better.mean())
    status = "holds" if frac == 1.0 else ("fails" if frac == 0.0 else "partial")
    return FindingResult(name, status, f"{what}: {int(better.sum())}/{len(pairs)} matched cells agree "
                         f"({metric}, mean difference {float(diff.mean()):+.4g}, tol {tol:g})")


def small_blocks_help(df: pd.DataFrame, metric: str | None = None, *, small: int = 64, large: int = 1024,
                      bits: int = 4) -> FindingResult:
    """Finding 5: at 4 bits, block size 64 beats 1024 for the same model and data type."""
    metric = metric or default_metric(df)
    if metric is None:
        return FindingResult("small-blocks-help", "no data", "no metric column")
    pairs = _paired(df, metric, "blocksize", small, large, {"bits": bits})
    return _pair_verdict("small-blocks-help", pairs, metric, f"{bits}-bit B={small} better than B={large}", True)


def quantile_best_by_perplexity(df: pd.DataFrame, metric: str | None = None) -> FindingResult:
    """Finding 6: by perplexity, quantile is the best data type at every model, scale and precision."""
    name = "quantile-best-by-perplexity"
    metric = metric or default_metric(df)
    if metric is None:
        return FindingResult(name, "no data", "no metric column")
    data = _ok(df, metric)
    data = data[(data["bits"] < 16) & data["dtype"].notna()]
    keys = [c for c in MATCH_ON if c in data.columns and c != "dtype"]
    wins, n = 0, 0
    for _, g in data.fillna({k: "-" for k in keys}).groupby(keys):
        if "quantile" not in set(g["dtype"]) or g["dtype"].nunique() < 2:
            continue
        score = g[metric] if _lower_better(metric) else -g[metric]
        n += 1
        wins += bool(score[g["dtype"] == "quantile"].min() <= score.min())
    if not n:
        return FindingResult(name, "no data", "needs quantile and another data type on the same cells")
    status = "holds" if wins == n else ("fails" if wins == 0 else "partial")
    return FindingResult(name, status, f"quantile best in {wins}/{n} (model, bits, block size) groups ({metric})")


def centering_no_gain(df: pd.DataFrame, metric: str | None = None, *, tol: float = 0.0) -> FindingResult:
    """App. B: distribution centering did not improve scaling in any scenario."""
    metric = metric or default_metric(df)
    if metric is None:
        return FindingResult("centering-no-gain", "no data", "no metric column")
    pairs = _paired(df, metric, "centered", True, False)
    return _pair_verdict("centering-no-gain", pairs, metric, "centered not better than absmax", False, tol)


def proxy_helps_3bit(df: pd.DataFrame, metric: str | None = None, *, frac: float = 0.02) -> FindingResult:
    """Finding 7: keeping 2 % of dimensions in 16 bit (proxy quantization) improves 3-bit cells."""
    metric = metric or default_metric(df)
    if metric is None:
        return FindingResult("proxy-helps-3bit", "no data", "no metric column")
    pairs = _paired(df, metric, "outlier_frac", frac, 0.0, {"bits": 3})
    return _pair_verdict("proxy-helps-3bit", pairs, metric, f"3-bit with outlier_frac={frac} better than 0", True)


def no_gain_at_high_bits(df: pd.DataFrame, metric: str | None = None, *, tol: float = 0.01) -> FindingResult:
    """Finding 4: at 6-8 bits no data type or block size changes the result by more than ``tol``."""
    name = "no-gain-at-6-8-bits"
    metric = metric or default_metric(df)
    if metric is None:
        return FindingResult(name, "no data", "no metric column")
    data = _ok(df, metric)
    data = data[(data["bits"] >= 6) & (data["bits"] <= 8)]
    if data.empty:
        return FindingResult(name, "no data", "no 6-8 bit cells")
    spread = data.groupby(["family", "size", "bits"])[metric].agg(lambda s: float(np.ptp(s.to_numpy(float))))
    spread = spread[data.groupby(["family", "size", "bits"])[metric].size() > 1]
    if spread.empty:
        return FindingResult(name, "no data", "needs >1 configuration per 6-8 bit cell")
    ok = spread <= tol
    status = "holds" if ok.all() else ("fails" if not ok.any() else "partial")
    return FindingResult(name, status, f"max spread over data types/block sizes {float(spread.max()):.4g} "
                         f"({metric}; tol {tol:g}; {int(ok.sum())}/{len(ok)} within)")


for _name, _statement, _check in (
    ("four-bit-optimal", "For a fixed number of total model bits, 4-bit precision is optimal in almost all "
     "families and scales (§5.1; exception BLOOM-176B at 3 bits, not significant)", four_bit_optimal),
    ("no-gain-at-6-8-bits", "At 6 to 8 bits no data type or block size improves scaling (App. C.3)",
     no_gain_at_high_bits),
    ("small-blocks-help", "At 4 bits, block size 64 beats 1024 (about the gain of going from 4 to 5 bits; "
     "recommendation: block size 128 or lower)", small_blocks_help),
    ("quantile-best-by-perplexity", "By perplexity, the quantile data type is best across all models, "
     "scales and precisions (ranking quantile >= float > int ~ dynamic)", quantile_best_by_perplexity),
    ("centering-no-gain", "Distribution centering did not improve scaling in any scenario (App. B)",
     centering_no_gain),
    ("proxy-helps-3bit", "Proxy quantization with 2% of dimensions in 16 bit stabilises 3-bit OPT and "
     "Pythia; at 4 bits it brings no benefit (Figure 4)", proxy_helps_3bit),
):
    FINDINGS.register(_name, Finding(_name, _statement, SOURCE, _check))


def check_findings(df: pd.DataFrame, metric: str | None = None) -> list[FindingResult]:
    """Every registered finding checked on ``df``."""
    return [FINDINGS.get(n)(df, metric=metric) for n in FINDINGS.names()]
