"""Issue 18 §4 item 5: the report's loss laws are fitted on weights-only cells. A study that also
holds W·A8 cells (same weight bits, worse loss) gets the same law fit as without them, and the law
section says how many cells it left out."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from kscale.fit import fit_law
from kscale.report.context import ReportOptions, StudyContext
from kscale.report.sections.law import law_choice, law_fit, law_section

_spec = importlib.util.spec_from_file_location("offset_rows", Path(__file__).parents[1] / "fit" / "test_format_offsets.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)


def _weights_rows() -> pd.DataFrame:
    rows = _mod._rows(noise_sd=0.003, seed=5)
    rows = rows[(rows["format"] == "blockwise") | rows["format"].isna()]
    return rows.assign(family="toy", method=np.where(rows["bits"] == 16, "none", "rtn"), entropy_rate=_mod.E,
                       act_bits=16, kv_bits=16)


def test_law_fit_ignores_runtime_precision_cells(tmp_path):
    weights = _weights_rows()
    a8 = weights[weights["bits"] < 16].assign(act_bits=8, nll_toy=lambda d: d["nll_toy"] + 0.3)
    ctx = StudyContext(tmp_path, pd.concat([weights, a8], ignore_index=True), ReportOptions(n_bootstrap=0),
                       out_dir=tmp_path).families[0]
    assert ctx.n_runtime_rows == len(a8) and len(ctx.weight_rows) == len(weights)
    law = law_choice(ctx).law
    fit = law_fit(ctx).fit
    alone = fit_law(weights, law, y="nll_toy")
    assert np.allclose(list(fit.params.values()), list(alone.params.values()), rtol=1e-6)
    text = "\n".join(law_section(ctx).markdown)
    assert f"the {len(a8)} cells with quantized activations or KV cache" in text
