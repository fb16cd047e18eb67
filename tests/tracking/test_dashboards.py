"""wandb dashboards: per-job curves (metric vs bits per data type) and one study summary run.

The end-to-end test runs ``python run_sweep.py ... wandb.mode=offline`` and reads the offline
runs back from their transaction logs (``run-*.wandb``: LevelDB-log framing around the wandb
SDK's own protobuf ``Record`` messages, parsed with ``wandb.proto.wandb_internal_pb2``), so it
checks what a ``wandb sync`` would upload, not what kscale meant to log.
"""
from __future__ import annotations

import html
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kscale.tracking import TrackingError, TrackingSpec, check_tracking, curve_metrics, job_curves

ROOT = Path(__file__).resolve().parents[2]


def _row(bits, dtype, value, **kw):
    method = "none" if bits == 16 else "rtn"
    return dict(bits=bits, method=method, dtype=dtype, nll_toy=value, status="ok", **kw)


def test_curves_are_one_line_per_dtype_with_a_flat_baseline():
    rows = [_row(16, None, 1.0, nll_toy_se=0.01),
            _row(3, "int", 1.5, exponent_bits=None), _row(4, "int", 1.2, exponent_bits=None),
            _row(4, "float", 1.25, exponent_bits=2), _row(3, "float", 1.4, exponent_bits=2),
            dict(_row(5, "float", float("nan"), exponent_bits=3), status="nan")]
    # statistics of a metric (its standard error) get no chart of their own
    assert curve_metrics(rows) == ["nll_toy"]
    # exponent_bits only follows the data type here, so it names no line; bits ascend; the
    # failed cell is left out; the baseline spans the quantized bits
    assert job_curves(rows, "nll_toy") == {
        "int": [(3.0, 1.5), (4.0, 1.2)], "float": [(3.0, 1.4), (4.0, 1.25)],
        "16-bit": [(3.0, 1.0), (4.0, 1.0)]}


def test_curves_split_by_a_setting_that_varies_within_a_dtype():
    rows = [_row(3, "int", 1.5, blocksize=64), _row(3, "int", 1.7, blocksize=1024),
            _row(4, "int", 1.2, blocksize=64)]
    assert job_curves(rows, "nll_toy") == {"int blocksize=64": [(3.0, 1.5), (4.0, 1.2)],
                                           "int blocksize=1024": [(3.0, 1.7)]}


def test_online_without_a_key_fails_before_any_work(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(TrackingError, match=r"wandb.mode=online: no W&B API key.*wandb.mode=offline"):
        check_tracking(TrackingSpec(mode="online"))
    check_tracking(TrackingSpec(mode="offline"))  # offline needs neither key nor network


def test_online_without_network_fails_in_seconds(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a closed port refuses at once
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match=r"127.0.0.1:9 is unreachable.*wandb.mode=offline"):
        check_tracking(TrackingSpec(mode="online"), timeout=2.0)
    assert time.perf_counter() - t0 < 5


# ---------------------------------------------------------------- the offline run files


def read_records(path: Path):
    """Every protobuf ``Record`` of a wandb transaction log, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a wandb transaction log"
    block, header = 32768, 7
    pos, chunk, out = 7, b"", []
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        pos += header
        if kind == 0 and length == 0:
            break
        chunk += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # a FULL record, or the LAST piece of a split one
            record = pb.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def read_run(run_dir: Path) -> dict:
    """``{"job_type", "name", "history": {key: value}, "files": [...], "summary": {...}}``."""
    (log_file,) = run_dir.glob("run-*.wandb")
    info: dict = {"history": {}, "files": [], "summary": {}, "dir": run_dir}
    for rec in read_records(log_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info["job_type"], info["name"] = rec.run.job_type, rec.run.display_name
        elif kind == "history":
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                info["history"][key] = json.loads(item.value_json)
        elif kind == "files":
            info["files"] += [f.path for f in rec.files.files]
        elif kind == "summary":
            for item in rec.summary.update:
                info["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return info


def logged(history: dict, key: str) -> dict:
    """A logged media object's fields (wandb flattens ``{"results": table}`` into ``results/path``,
    ``results/nrows``, ...)."""
    fields = {k[len(key) + 1:]: v for k, v in history.items() if k.startswith(key + "/")}
    assert fields, f"nothing logged under {key!r}; logged: {sorted(history)[:40]}"
    return fields


# three sizes: the fewest the report fits a law to (with two it draws no law-fit figure)
TINY = ["model=toy", "model.sizes=[L1-d8,L1-d16,L2-d24]", "model.provider_options.tokens_per_param=2",
        "eval=toy", "eval.perplexity=[{dataset:toy,max_tokens:1024}]", "progress=false",
        "bits=3,4,16", "dtype=int,float"]


def _wait_for_logs(runs_root: Path, n: int, deadline_s: float = 30) -> list[Path]:
    """The wandb service may still be flushing a run's log after the command returns."""
    deadline = time.time() + deadline_s
    while True:
        dirs = sorted(runs_root.glob("offline-run-*"))
        if len(dirs) >= n and all(list(d.glob("run-*.wandb")) for d in dirs) or time.time() > deadline:
            return dirs
        time.sleep(0.5)


@pytest.mark.slow
def test_offline_sweep_logs_table_job_curves_and_study_figures(tmp_path):
    env = dict(os.environ, HYDRA_FULL_ERROR="0", WANDB_SILENT="true")
    proc = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *TINY, "wandb.mode=offline",
                           f"results_dir={tmp_path}", "name=dash"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_dashboards(tmp_path / "dash")


def check_dashboards(study: Path) -> None:
    """The offline runs of a finished study: 3 job runs with table + curves, 1 summary run."""
    from kscale.results import load_results

    df = load_results(study)
    runs = [read_run(d) for d in _wait_for_logs(study / "wandb", 4)]
    jobs = {r["name"]: r for r in runs if r.get("job_type") == "sweep-job"}
    (summary_run,) = [r for r in runs if r.get("job_type") == "study-summary"]
    assert set(jobs) == {"toy-L1-d8", "toy-L1-d16", "toy-L2-d24"}

    for name, run in jobs.items():
        rows = df[df["size"] == name.removeprefix("toy-")]
        # the results table holds every cell of the job
        table = logged(run["history"], "results")
        assert table["_type"] == "table-file" and table["nrows"] == len(rows) == 5
        # its curves: nll_toy vs bits, one line per dtype + the baseline, the values the rows hold
        chart = logged(run["history"], "curves/nll_toy_table")
        data = json.loads((run["dir"] / "files" / chart["path"]).read_text())
        assert data["columns"] == ["step", "lineKey", "lineVal"]
        got = {(line, x): y for x, line, y in data["data"]}
        assert {line for line, _ in got} == {"int", "float", "16-bit"}
        for _, r in rows[(rows["bits"] < 16) & (rows["status"] == "ok")].iterrows():
            assert math.isclose(got[(r["dtype"], float(r["bits"]))], r["nll_toy"], rel_tol=1e-12)
        base = rows.loc[rows["bits"] == 16, "nll_toy"].item()
        assert got[("16-bit", 3.0)] == got[("16-bit", 4.0)] == pytest.approx(base, rel=1e-12)

    # the study run: every figure the report drew (the frontier among them), summary, table
    history = summary_run["history"]
    pngs = sorted(p.stem for p in (study / "figures").glob("*.png"))
    assert "toy-bits-scaling" in pngs  # the Pareto frontier over total bits
    assert any(p.startswith("toy-fit-") for p in pngs)  # the law fit with its bootstrap band
    for stem in pngs:
        image = logged(history, f"study/{stem}")
        assert image["_type"] == "image-file"
        assert (summary_run["dir"] / "files" / image["path"]).stat().st_size > 1000
    assert logged(history, "study/results")["nrows"] == len(df) == 15
    page = (summary_run["dir"] / "files" / logged(history, "study/summary")["path"]).read_text()
    assert html.escape((study / "summary.md").read_text().splitlines()[0].strip()) in page
    assert "summary.md" in summary_run["files"]
    assert "toy" in summary_run["summary"]["answer"]  # the report's answer, on the run's overview
