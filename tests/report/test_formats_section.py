"""The report's formats section (issue 18 §4) on a synthetic study with known offsets: it names
the best format, tabulates c_format with intervals, ranks at each budget and draws its figure;
a one-format study has no such section."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from kscale.report.context import ReportOptions, StudyContext
from kscale.report.sections import SECTION_ORDER, SECTIONS

_spec = importlib.util.spec_from_file_location("offset_rows", Path(__file__).parents[1] / "fit" / "test_format_offsets.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)


def _study(tmp_path, df):
    df = df.assign(family="toy", method="rtn", entropy_rate=_mod.E, n_tokens=1e6, nll_toy_se=0.01,
                   dnll_toy_se=0.002)
    ctx = StudyContext(tmp_path, df, ReportOptions(n_bootstrap=200), out_dir=tmp_path)
    return ctx.families[0]


def test_formats_section_reports_offsets_rankings_and_figure(tmp_path):
    assert "formats" in SECTION_ORDER
    out = SECTIONS.get("formats")(_study(tmp_path, _mod._rows(noise_sd=0.002, seed=3)))
    text = "\n".join(out.markdown)
    assert "### Which format at which size" in text and "| nvfp4 |" in text
    assert "E = 2.5 (known)" in text
    # nvfp4 has the lowest true offset (-0.08 vs nf-B64 = 0)
    assert out.answer is not None and out.answer.startswith("Formats: `nvfp4` has the lowest offset")
    assert set(out.table["format"]) == set(_mod.OFFSETS)
    assert "dnll_toy_se" in text  # paired noise drives the bootstrap
    assert any(p.name == "toy-formats.png" for p in out.figures)


def test_one_format_study_has_no_formats_section(tmp_path):
    rows = _mod._rows()
    only = rows[(rows["format"] == "blockwise") | rows["format"].isna()]
    out = SECTIONS.get("formats")(_study(tmp_path, only))
    assert out.markdown == [] and out.answer is None


def test_a_format_measured_at_one_size_is_flagged_not_named_best(tmp_path):
    rows = _mod._rows(noise_sd=0.002, seed=3)
    one = rows[(rows["format"] == "nvfp4") & (rows["size"] == "s2")].assign(format="mxfp8_e4m3",
                                                                            nll_toy=lambda d: d["nll_toy"] - 0.05)
    out = SECTIONS.get("formats")(_study(tmp_path, pd.concat([rows, one], ignore_index=True)))
    text = "\n".join(out.markdown)
    assert "Measured at one size only" in text and "`mxfp8_e4m3`" in text
    assert out.answer.startswith("Formats: `nvfp4` has the lowest offset")
