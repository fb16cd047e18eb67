"""wandb offline: one run per job, rows logged as a table and as identity-keyed metrics."""
from __future__ import annotations

import json
import time

import pytest

from kscale.sweep.plan import TrackingSpec
from kscale.tracking import Tracker, make_tracker


def test_disabled_is_a_no_op_without_wandb():
    tracker = make_tracker(TrackingSpec(), group="g", name="n", config={})
    assert type(tracker) is Tracker
    tracker.log_row({"a": 1}, label="x")
    tracker.finish()


def test_invalid_mode_names_the_allowed_values():
    with pytest.raises(ValueError, match="disabled, offline, online"):
        TrackingSpec(mode="on")


@pytest.mark.slow
def test_offline_run_writes_rows_and_finishes_on_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    spec = TrackingSpec(mode="offline", project="kscale-test", dir=str(tmp_path))
    rows = [{"key": "k1", "bits": 4, "ppl_toy": 11.5, "status": "ok"},
            {"key": "k2", "bits": 3, "ppl_toy": 19.25, "status": "ok", "kl_toy": 0.5}]
    with pytest.raises(RuntimeError):
        with make_tracker(spec, group="study", name="toy-s1", config={"bits": [3, 4]}) as tr:
            for row in rows:
                tr.log_row(row, label=f"toy-s1/b{row['bits']}")
            raise RuntimeError("job failed")  # finish() must still run
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run_dir.glob("run-*.wandb"))
    tables = sorted((run_dir / "files" / "media" / "table").glob("results_*.table.json"),
                    key=lambda p: p.stat().st_mtime)
    last = json.loads(tables[-1].read_text())
    keys = [r[last["columns"].index("key")] for r in last["data"]]
    assert keys == ["k1", "k2"]
    assert last["data"][1][last["columns"].index("kl_toy")] == 0.5
    assert last["data"][0][last["columns"].index("kl_toy")] is None  # widened column
    # metrics keyed by the cell's identity are in the run's (binary, uncompressed) record log
    # (the wandb service may still be flushing it after finish() returns)
    (log_file,) = run_dir.glob("run-*.wandb")
    deadline = time.time() + 20
    while b"toy-s1/b3/ppl_toy" not in log_file.read_bytes() and time.time() < deadline:
        time.sleep(0.2)
    assert b"toy-s1/b3/ppl_toy" in log_file.read_bytes()
