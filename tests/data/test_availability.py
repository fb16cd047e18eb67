"""Config-time availability checks and fail-fast hub errors (no minutes of retries offline)."""
from __future__ import annotations

import gzip
import json
import time

import pytest

from kscale.data import DataError, check_available, check_task_available, load_corpus, load_task_data
from kscale.evaluate import PerplexitySpec, ZeroShotSpec, check_eval_data


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Hub allowed by the environment but unreachable: a closed local port refuses at once."""
    from kscale import net

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    net.hub_unreachable_reason.cache_clear()
    yield
    net.hub_unreachable_reason.cache_clear()


def test_check_available_local_and_missing(data_dir, tmp_path):
    check_available("wikitext2", data_dir, "local")
    check_available("ptb", data_dir, "auto", split="validation")
    check_task_available("hellaswag", data_dir, "local")
    check_eval_data([PerplexitySpec("wikitext2"), ZeroShotSpec("piqa")], data_dir, "auto")
    with pytest.raises(DataError, match=r"not found at .*wiki\.test\.raw"):
        check_available("wikitext2", tmp_path, "local")
    with pytest.raises(DataError, match="needs path="):
        check_available("text", tmp_path)
    with pytest.raises(ValueError, match="Did you mean 'wikitext2'"):
        check_available("wikitext", tmp_path)
    with pytest.raises(ValueError, match="data source must be one of"):
        check_available("ptb", data_dir, "web")
    # conftest disables the hub: a missing corpus names itself, where it looked, and why
    with pytest.raises(DataError, match=r"corpus 'c4' is not on disk \(looked for .*c4-validation.*hub is disabled"):
        check_available("c4", tmp_path)
    with pytest.raises(DataError, match=r"task 'winogrande' is not on disk .*dev\.jsonl.*hub is disabled"):
        check_eval_data([ZeroShotSpec("winogrande")], tmp_path)


def test_unreachable_hub_fails_fast(tmp_path, unreachable_hub):
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"corpus 'c4'.*looked for .*c4-validation.*127\.0\.0\.1:9 is unreachable"):
        load_corpus("c4", data_dir=tmp_path)
    with pytest.raises(DataError, match="unreachable"):
        check_available("wikitext2", tmp_path)
    with pytest.raises(DataError, match=r"task 'piqa' is not on disk .*unreachable"):
        load_task_data("piqa", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"task 'lambada' .*unreachable"):
        load_task_data("lambada", data_dir=tmp_path)
    assert time.perf_counter() - t0 < 10  # one refused connect, no retries


def test_c4_local_file(tmp_path):
    folder = tmp_path / "c4"
    folder.mkdir()
    with gzip.open(folder / "c4-validation.00000-of-00008.json.gz", "wt", encoding="utf-8") as fh:
        for i in range(5):
            fh.write(json.dumps({"text": f"document {i}", "url": "x"}) + "\n")
    check_available("c4", tmp_path, "local")
    c = load_corpus("c4", data_dir=tmp_path, n_documents=3)
    assert c.rows == ("document 0", "document 1", "document 2") and c.documents == c.rows
