"""Issue 17 §4: the report's machinery gives the paper's answer where the paper's data say it, and
says "not identified" where the data cannot decide (studies generated in tests/report/studies.py)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from kscale.references.dettmers import four_bit_optimal
from kscale.report import write_report

_spec = importlib.util.spec_from_file_location("report_studies", Path(__file__).with_name("studies.py"))
studies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(studies)


def _decision_rows(text: str) -> list[list[str]]:
    block = text.split("### Optimal precision per budget")[1].split("\n\n")[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


@pytest.mark.slow
def test_dettmers_study_answers_four_bit_with_its_uncertainty(tmp_path):
    df = studies.dettmers_study()
    # the generator is the paper's finding, checked by kscale.references' independent reading of the curves
    assert four_bit_optimal(df, "nll_toy").status == "holds"
    rep = write_report(tmp_path / "dz", df=df, n_bootstrap=200)
    text = rep.summary_path.read_text()
    rows = _decision_rows(text)
    assert len(rows) == 5
    for total_bits, best, p_best, interval, p3, p4, *_ in rows:
        assert best == "4", rows  # 4-bit at every budget
        lo, hi = (float(v) for v in re.findall(r"[0-9.]+", interval))
        assert lo <= 4 <= hi and lo > 3 and hi < 16  # the 95% interval holds the truth, excludes 3 and 16 bit
        assert float(p4) >= 0.5 and float(p3) <= 0.05
    assert "4-bit from" in rep.answer and "not identified" not in rep.answer
    # the stated uncertainty is the bootstrap's: P < 0.9 must be called "not decided", P >= 0.9 "decided"
    decided = all(float(r[2]) >= 0.9 for r in rows)
    assert ("That is decided" in rep.answer) == decided and ("That is not decided" in rep.answer) == (not decided)
    # both errors of the chosen law are reported, and the law is chosen by the precision effect
    assert re.search(r"mispredicts that size's level by [0-9.]+% on average and its precision effect by [0-9.]+%",
                     rep.answer)
    assert "predicts the precision effect at the held-out largest size best" in rep.answer
    # the measured noise is drawn: the Figure-1 view has error bars from nll_toy_se
    assert (tmp_path / "dz" / "figures" / "toy-bits-scaling.png").exists()


@pytest.mark.slow
def test_neff_with_vanishing_gamma_is_not_identified(tmp_path):
    rep = write_report(tmp_path / "flat", df=studies.flat_neff_study(gamma=0.05), n_bootstrap=200)
    assert "The precision decision is not identified" in rep.answer
    assert "follows from the form" in rep.answer
    # said next to the answer, not only in the tables below it
    text = rep.summary_path.read_text()
    answer = text.split("## Answer")[1].split("## Family")[0]
    assert "not identified" in answer
    if rep.laws["toy"] in ("offset", "neff"):  # forms whose optimum cannot move with the budget say so
        assert "cannot depend on the budget" in answer
