"""plan=true prices the training of provider-built rungs that are not cached (issue 20 §4):
6·N·D FLOPs, at this machine's measured toy throughput when a rung of that size was trained here."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from kscale.estimate import device_profile
from kscale.estimate.training import training_runs, training_summary, variant_label
from kscale.models import resolve_models
from kscale.paths import default_cache_dir
from kscale.toy.ladder import ToyOptions, planned_tokens


def _pair(options):
    (spec,) = resolve_models("toy", ["L1-d4"], provider_options=options, check_hub=False)
    return SimpleNamespace(provider_options=options, config={}), spec


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A cache of this test's own: rungs other tests trained would be measured rates too."""
    monkeypatch.setenv("KSCALE_CACHE_DIR", str(tmp_path / "cache"))


def test_training_is_priced_once_per_build_and_rung_at_the_measured_rate():
    options = {"tokens_per_param": 2, "train_bits_w": 4, "train_bits_kv": 8}
    plan, spec = _pair(options)
    # a rung of the same size trained here before (another build): 6 * 1000 * 20000 FLOP in 12 s = 10 MFLOP/s
    stats = default_cache_dir() / "toy" / "elsewhere" / "L1-d4" / "train_stats.json"
    stats.parent.mkdir(parents=True)
    stats.write_text(json.dumps({"n_params": 1000, "n_tokens": 20000, "train_s": 12.0}))
    cpu = device_profile("cpu")
    runs = training_runs([(plan, spec), (plan, spec), _pair({"tokens_per_param": 2})], cpu)
    assert len(runs) == 2  # two builds of one rung; the repeated (plan, spec) counted once
    w4 = next(r for r in runs if r.variant)
    assert w4.variant == "w4,kv8" == variant_label(plan, spec)
    tokens = planned_tokens("L1-d4", ToyOptions.from_mapping(options))
    assert w4.tokens == tokens and w4.n_params == 1028
    assert w4.flops == pytest.approx(6 * 1028 * tokens)
    assert not w4.cached and w4.seconds == pytest.approx(w4.flops / 1e7)
    assert w4.rate_source.startswith("measured")
    text = training_summary(runs)
    assert text.startswith("training: 2 of 2 runs to train") and "6·N·D" in text and "w4,kv8" in text


def test_without_a_measured_rung_the_profile_prices_it():
    plan, spec = _pair({"tokens_per_param": 2, "train_bits_a": 8})
    cpu = device_profile("cpu")
    (run,) = training_runs([(plan, spec)], cpu)
    assert run.rate_source == "profile cpu" and run.seconds == pytest.approx(run.flops / cpu.rate("float32"))
