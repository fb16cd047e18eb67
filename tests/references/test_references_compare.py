"""Published tables as data, compare_study's matching and protocol check, findings, bpw checks."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kscale.references import (
    FINDINGS,
    FORMATS,
    TABLES,
    check_findings,
    compare_study,
    format_comparison,
    ledger_check,
    parse_eval,
)

GPTQ_EVAL = "gptq/v1 split=test seqlen=2048 max_tokens=None max_windows=None bos=</s> kl=on(4096)"


def test_gptq_table3_values_are_the_transcribed_ones():
    t = TABLES.get("gptq-opt-wikitext2")
    v = {(x.size, x.method, x.bits): x for x in t.values}
    assert len(t.values) == 5 * 9
    # spot values of REFERENCES.md §2.2 (a transcription slip would change one of these)
    assert v[("125m", "none", 16)].value == 27.65
    assert v[("1.3b", "rtn", 4)].value == 48.17
    assert v[("66b", "rtn", 4)].printed == "110"
    assert v[("350m", "gptq", 3)].value == 33.79
    assert v[("175b", "rtn", 3)].value == 7300.0 and v[("175b", "rtn", 3)].printed == "7.3e3"
    assert v[("175b", "gptq", 3)].value == 8.68
    assert not t.memory and t.protocol.seqlen == 2048 and t.protocol.bos["opt"] == "</s>"
    b = {(x.size, x.method, x.bits): x.value for x in TABLES.get("gptq-bloom-wikitext2").values}
    assert b[("560m", "none", 16)] == 22.42 and b[("176b", "rtn", 3)] == 571.0


def _row(size, method, bits, ppl, *, eval_str=GPTQ_EVAL, blocksize=None, **kw):
    row = {"family": "opt", "size": size, "method": method, "bits": bits,
           "dtype": None if method == "none" else "int", "centered": method != "none",
           "blocksize": None if method == "none" else blocksize, "status": "ok",
           "ppl_wikitext2": ppl, "nll_wikitext2": math.log(ppl), "eval_wikitext2": eval_str,
           "key": f"{size}-{method}-{bits}-{blocksize}"}
    row.update(kw)
    return row


def test_compare_study_matches_cells_and_checks_the_protocol():
    df = pd.DataFrame([
        _row("125m", "none", 16, 27.70),
        _row("125m", "rtn", 4, 37.00),
        _row("125m", "gptq", 4, 31.50, calib_dataset="wikitext2", calib_split="test",
             calib_nsamples=128, calib_seqlen=2048),
        _row("350m", "rtn", 3, 70.0, eval_str=GPTQ_EVAL.replace("seqlen=2048", "seqlen=1024")),
        _row("350m", "rtn", 4, 26.0, blocksize=64),            # grouped: not the table's cell
        _row("1.3b", "none", 16, 14.0, eval_str=GPTQ_EVAL.replace("max_tokens=None", "max_tokens=8192")),
        _row("125m", "rtn", 8, 28.0),                          # the table has no 8-bit row
        _row("2.7b", "rtn", 4, 17.0, status="nan"),            # not ok: ignored
    ])
    out = compare_study(df, "gptq-opt-wikitext2")
    assert len(out) == 5
    got = out.set_index(["size", "method", "bits"])
    assert got.loc[("125m", "none", 16), "diff"] == pytest.approx(27.70 - 27.65)
    assert got.loc[("125m", "rtn", 4), "rel_diff"] == pytest.approx(37.0 / 37.28 - 1)
    assert got.loc[("125m", "none", 16), "protocol_match"]
    assert not got.loc[("350m", "rtn", 3), "protocol_match"]
    assert "seqlen 1024 != 2048" in got.loc[("350m", "rtn", 3), "mismatch"]
    assert "max_tokens=8192" in got.loc[("1.3b", "none", 16), "mismatch"]
    gptq_notes = got.loc[("125m", "gptq", 4), "notes"]
    assert "calibration dataset wikitext2 != c4, split test != train" in gptq_notes
    assert "nsamples" not in gptq_notes and "seqlen" not in gptq_notes  # 128.0 == 128
    assert "quantizer" in got.loc[("125m", "rtn", 4), "notes"]
    # a wrong BOS is a protocol difference too
    bad = compare_study(pd.DataFrame([_row("125m", "none", 16, 27.6, eval_str=GPTQ_EVAL.replace("bos=</s>", "bos=none"))]),
                        "gptq-opt-wikitext2")
    assert "bos none != </s>" in bad.loc[0, "mismatch"]
    md = format_comparison(out)
    assert md.startswith("Comparison with GPTQ Table 3")
    assert "| opt-125m | none | 16 |" in md and "27.65" in md and "differs: seqlen 1024 != 2048" in md
    assert "3 of 5 matched cells were measured under the published protocol" in md
    assert "No cell" in format_comparison(compare_study(df.iloc[:0], "gptq-opt-wikitext2"))


def test_parse_eval_reads_the_row_protocol_string():
    d = parse_eval(GPTQ_EVAL)
    assert d == {"protocol": "gptq", "version": "v1", "split": "test", "seqlen": "2048", "max_tokens": "None",
                 "max_windows": "None", "bos": "</s>", "kl": "on(4096)"}
    assert parse_eval(None) == {} and parse_eval(float("nan")) == {}


def test_storage_formats_bits_per_weight_and_ledger():
    assert FORMATS.get("Q4_0").bits_per_weight == 4.5
    assert FORMATS.get("Q8_0").bits_per_weight == 8.5
    assert FORMATS.get("Q4_K").bits_per_weight == 4.5
    for name in ("Q4_0", "Q8_0", "Q4_K"):  # kscale's registered GGUF formats cost the struct's bits
        c = ledger_check(name)
        assert c["match"] is True and c["kscale_bpw"] == c["format_bpw"] == c["published_bpw"]
    for name in ("Q4_0", "Q8_0"):  # and the block-wise format stores the same bits
        assert ledger_check(name)["blockwise_bpw"] == FORMATS.get(name).bits_per_weight
    assert ledger_check("Q4_K")["blockwise_bpw"] is None  # two-level constants: no QuantSpec equivalent


def _curves(bits_offsets, sizes=(1e6, 4e6, 16e6, 64e6), families=("opt",)):
    """Synthetic rows: nll = a - 0.3 log(N) + offset(k), total_bits = N * (k + 0.25)."""
    rows = []
    for fam in families:
        for n in sizes:
            for k, off in bits_offsets.items():
                rows.append({"family": fam, "size": f"{n:g}", "n_params": n, "method": "rtn" if k < 16 else "none",
                             "dtype": "int", "bits": k, "blocksize": 64, "centered": False, "exponent_bits": None,
                             "scale_bits": 16, "outlier_frac": 0.0, "status": "ok",
                             "total_bits": n * (k + (0.25 if k < 16 else 0)), "nll_wikitext2": 8 - 0.3 * np.log(n) + off})
    return pd.DataFrame(rows)


def test_four_bit_optimal_detects_both_outcomes():
    # small offsets: fewer bits win for the same total bits until 4; 3-bit degrades a lot
    holds = _curves({3: 1.0, 4: 0.05, 8: 0.0, 16: 0.0})
    assert FINDINGS.get("four-bit-optimal")(holds).status == "holds"
    # 4-bit much worse than 8/16 at equal total bits, still better than a broken 3-bit: partial
    partial = _curves({3: 2.0, 4: 1.0, 8: 0.0, 16: 0.0})
    res = FINDINGS.get("four-bit-optimal")(partial)
    assert res.status == "partial" and "opt 4 vs 8: never" in res.detail and "opt 4 vs 3: 4-bit better" in res.detail
    # 4-bit loses to every other precision
    assert FINDINGS.get("four-bit-optimal")(_curves({3: 0.9, 4: 1.0, 8: 0.0, 16: 0.0})).status == "fails"
    assert FINDINGS.get("four-bit-optimal")(holds.iloc[:0]).status == "no data"


def test_paired_findings_on_synthetic_rows():
    base = _curves({4: 0.1, 3: 1.0})
    b1024 = base.assign(blocksize=1024, nll_wikitext2=base["nll_wikitext2"] + 0.05)
    assert FINDINGS.get("small-blocks-help")(pd.concat([base, b1024])).status == "holds"
    worse = base.assign(blocksize=1024, nll_wikitext2=base["nll_wikitext2"] - 0.05)
    assert FINDINGS.get("small-blocks-help")(pd.concat([base, worse])).status == "fails"
    q = base.assign(dtype="quantile", nll_wikitext2=base["nll_wikitext2"] - 0.01)
    assert FINDINGS.get("quantile-best-by-perplexity")(pd.concat([base, q])).status == "holds"
    c = base.assign(centered=True, nll_wikitext2=base["nll_wikitext2"] + 0.01)
    assert FINDINGS.get("centering-no-gain")(pd.concat([base, c])).status == "holds"
    results = {r.name: r.status for r in check_findings(pd.concat([base, b1024, q, c]))}
    assert set(results) == set(FINDINGS.names())
    assert results["proxy-helps-3bit"] == "no data"


@pytest.mark.slow
def test_compare_reads_real_rows_of_the_tiny_model(tmp_path, data_dir):
    """Mechanics on real rows: a sweep of the shared tiny GPT-2 (16-bit + int4 per row) and a
    registered test table for it; compare_study parses the rows' recorded protocol."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from kscale.config import build_plan
    from kscale.references import PublishedProtocol, PublishedTable, PublishedValue
    from kscale.results import load_results
    from kscale.sweep import run_plan

    root = Path(__file__).resolve().parents[2]
    tiny = data_dir / "models" / "tiny-gpt2"
    overrides = ["model=gpt2", "model.sizes=[small]", f"model.local_paths={{small:{tiny}}}", "model.device=cpu",
                 "model.dtype=float32", "eval=wikitext2",
                 "eval.perplexity=[{dataset:wikitext2,seqlen:1024,max_tokens:4096}]", "bits=[4,16]",
                 "dtype=int", "blocksize=[null]", "centered=true", f"results_dir={tmp_path}", "name=cmp",
                 "progress=false"]
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        plan = build_plan(compose(config_name="sweep", overrides=overrides))
    run_plan(plan)
    df = load_results(tmp_path / "cmp")
    assert len(df) == 2
    table = PublishedTable(
        name="test-tiny", title="test table", source="this test", metric="ppl",
        protocol=PublishedProtocol(dataset="wikitext2", protocol="gptq", split="test", seqlen=1024,
                                   bos={"gpt2": "none"}, blocksize=None),
        values=(PublishedValue("gpt2", "small", "none", 16, 50000.0, "5e4"),
                PublishedValue("gpt2", "small", "rtn", 4, 50000.0, "5e4")))
    TABLES.register("test-tiny", table)
    try:
        out = compare_study(df, "test-tiny")
    finally:
        TABLES._items.pop("test-tiny")
    assert len(out) == 2
    ours = df.set_index("bits")["ppl_wikitext2"]
    assert out.set_index("bits")["ours"].to_dict() == pytest.approx({16: ours[16], 4: ours[4]})
    # GPT-2 adds no BOS and seqlen matches; the 4096-token budget is the only protocol difference
    assert set(out["mismatch"]) == {"budget max_tokens=4096 max_windows=None (the table scores the whole split)"}
