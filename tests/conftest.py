"""Shared fixtures: no network, caches in a per-session temporary folder, shared data path."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never touch the hub from tests, and keep wandb local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory):
    """Point kscale's caches (token streams, toy ladder) at a fresh folder for this session."""
    if "KSCALE_TEST_KEEP_CACHE" in os.environ:
        yield Path(os.environ.get("KSCALE_CACHE_DIR", ""))
        return
    cache = tmp_path_factory.mktemp("kscale-cache")
    old = os.environ.get("KSCALE_CACHE_DIR")
    os.environ["KSCALE_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("KSCALE_CACHE_DIR", None)
    else:
        os.environ["KSCALE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared reference data (``../shared/data`` or ``$KSCALE_DATA_DIR``)."""
    from kscale.paths import default_data_dir

    path = default_data_dir()
    if not (path / "README.md").exists():
        pytest.fail(f"shared data not found at {path}; set KSCALE_DATA_DIR")
    return path
