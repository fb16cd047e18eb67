"""The results store: durable appends, torn tails, de-duplication, resume keys, exports."""
from __future__ import annotations

import json
import math

import pandas as pd

from kscale.results import ResultStore, export_table, iter_rows, load_results, row_key


def _row(key, status="ok", ts="2024-01-01T00:00:00", **extra):
    return {"family": "toy", "size": "s1", "bits": 4, "dtype": "int", "key": key,
            "status": status, "timestamp": ts, **extra}


def test_row_key_is_order_invariant_and_value_sensitive():
    a = row_key({"bits": 4, "dtype": "int", "blocksize": None})
    assert a == row_key({"blocksize": None, "dtype": "int", "bits": 4})
    assert a != row_key({"bits": 4, "dtype": "int", "blocksize": 64})
    assert row_key({"bits": 4}) != row_key({"bits": 4.5})
    assert len(a) == 16 and int(a, 16) >= 0


def test_store_is_lazy_and_each_job_gets_its_own_file(tmp_path):
    s1, s2 = ResultStore(tmp_path / "study", "toy-s1"), ResultStore(tmp_path / "study", "toy-s1")
    assert s1.path != s2.path
    assert not (tmp_path / "study").exists()  # nothing written before the first row
    s1.append(_row("a"))
    s2.append(_row("b"))
    s1.close(), s2.close()
    assert len(list((tmp_path / "study" / "rows").glob("*.jsonl"))) == 2
    assert ResultStore(tmp_path / "study").finished_keys() == {"a", "b"}


def test_torn_last_line_is_skipped_and_nan_round_trips(tmp_path):
    with ResultStore(tmp_path, "job") as store:
        store.append(_row("a", ppl_toy=12.5))
        store.append(_row("b", status="nan", ppl_toy=float("nan")))
    with open(store.path, "a") as fh:
        fh.write('{"key": "c", "status": "ok", "fam')  # kill -9 mid-write
    rows = list(iter_rows(tmp_path))
    assert [r["key"] for r in rows] == ["a", "b"]
    df = load_results(tmp_path)
    assert len(df) == 2 and math.isnan(df.set_index("key").loc["b", "ppl_toy"])
    assert ResultStore(tmp_path).finished_keys() == {"a", "b"}


def test_dedup_keeps_newest_final_row_and_errors_are_retried(tmp_path):
    with ResultStore(tmp_path, "job") as store:
        store.append(_row("a", ppl_toy=1.0, ts="2024-01-01T00:00:01"))
        store.append(_row("a", ppl_toy=2.0, ts="2024-01-01T00:00:02"))  # rerun=true
        store.append(_row("b", status="error", ts="2024-01-01T00:00:01", error="boom"))
        store.append(_row("c", ppl_toy=3.0, ts="2024-01-01T00:00:01"))
        store.append(_row("c", status="error", ts="2024-01-01T00:00:09", error="later bug"))
    assert ResultStore(tmp_path).finished_keys() == {"a", "c"}  # b must be re-run
    df = load_results(tmp_path).set_index("key")
    assert df.loc["a", "ppl_toy"] == 2.0
    assert df.loc["b", "status"] == "error"
    assert df.loc["c", "status"] == "ok" and df.loc["c", "ppl_toy"] == 3.0
    assert df.index.is_unique and len(df) == 3


def test_export_parquet_and_csv_round_trip(tmp_path):
    with ResultStore(tmp_path, "job") as store:
        store.append(_row("a", exponent_bits=None, ppl_toy=1.5))
        store.append(_row("b", exponent_bits=2, ppl_toy=2.5, bits=3))
    paths = export_table(tmp_path)
    back = pd.read_parquet(paths["parquet"])
    assert sorted(back["key"]) == ["a", "b"] and set(back["ppl_toy"]) == {1.5, 2.5}
    assert load_results(paths["csv"])["key"].tolist() == load_results(tmp_path)["key"].tolist()
    assert json.loads(store.path.read_text().splitlines()[0])["key"] == "a"


def test_empty_study_gives_empty_frame_with_columns(tmp_path):
    df = load_results(tmp_path / "missing")
    assert df.empty and {"key", "status", "bits_per_param"} <= set(df.columns)
