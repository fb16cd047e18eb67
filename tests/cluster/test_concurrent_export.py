"""Two sweeps of one study export its table at the same moment (two SLURM commands finishing
together): neither fails, and the table that stays is whole. The interleaving is forced: the
second export runs completely between the first one's write and its rename."""
from __future__ import annotations

import json

import pandas as pd

import kscale.results as results
from kscale.results import export_table


def _study(tmp_path, n=5):
    rows = tmp_path / "study" / "rows"
    rows.mkdir(parents=True)
    with open(rows / "job.jsonl", "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"key": f"k{i}", "status": "ok", "bits": 3 + i, "nll_toy": 1.0 + i,
                                 "timestamp": f"2026-01-01T00:00:0{i}"}) + "\n")
    return tmp_path / "study"


def test_interleaved_exports_both_succeed_and_leave_a_whole_table(tmp_path, monkeypatch):
    study = _study(tmp_path)
    real_replace = results.os.replace
    other: list = []
    started: list = []

    def replace_after_another_export(src, dst):
        if not started:  # the other command exports in full right here
            started.append(True)
            other.append(export_table(study))
        real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace_after_another_export)
    mine = export_table(study)
    assert other and set(mine) == set(other[0]) == {"parquet", "csv"}
    table = pd.read_parquet(study / "table.parquet")
    assert sorted(table["key"]) == [f"k{i}" for i in range(5)]
    assert len(pd.read_csv(study / "table.csv")) == 5
    assert not list(study.glob("*.tmp")) and not list(study.glob(".*.tmp"))  # no leftovers
