"""Notebook 03 (training tokens) runs top to bottom on a synthetic toy_tokens-like study.

The real study (``results/toy-tokens``) is built separately; until it is committed, the notebook's
code path is exercised here on rows generated from the ``qid`` law with known β, so the printed
trend must say "grows" with an interval around the truth.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "03-training-tokens.ipynb"


def _tagged(nb, tag):
    cells = [c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, tag
    return cells[0]


def _text(cell) -> str:
    return "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def _n_images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


@pytest.mark.slow
def test_training_tokens_notebook_on_synthetic_study(tmp_path, monkeypatch, tokens_study):
    study = tmp_path / "toy-tokens"
    (study / "rows").mkdir(parents=True)
    with open(study / "rows" / "part.jsonl", "w") as f:
        for rec in tokens_study("qid", noise=0.02).to_dict(orient="records"):
            f.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}) + "\n")
    monkeypatch.setenv("KSCALE_STUDY", str(study))
    monkeypatch.delenv("KSCALE_METRIC", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:200]
    assert "toy-tokens" in _text(_tagged(nb, "setup")) and "delta_nll_toy" in _text(_tagged(nb, "setup"))
    assert "checkpoints per size: [5]" in _text(_tagged(nb, "checkpoints"))
    assert "0 without a 16-bit baseline" in _text(_tagged(nb, "delta"))
    assert "in 20 of 20 (size, bits) series" in _text(_tagged(nb, "delta"))
    assert _n_images(_tagged(nb, "degradation-figure")) == 1
    assert _n_images(_tagged(nb, "fit-figures")) == 2
    trend = _text(_tagged(nb, "trend"))
    m = re.search(r"qid: degradation grows .*= ([0-9.]+) \(95% interval \[([0-9.]+), ([0-9.]+)\]", trend)
    assert m, trend
    assert float(m.group(2)) <= 0.5 <= float(m.group(3)) + 0.01  # the generating β = 0.5
    assert "ptq: degradation grows" in trend
    thr = _tagged(nb, "threshold")
    assert _n_images(thr) == 1 and "reaches ΔL = 0.05 nats after" in _text(thr)
