"""Issue 18 §5: a fast kernel checks itself against the eager reference on its first call per
(config, block size, device, dtype); a wrong or crashing one falls back to eager with one
warning, and rows learn which kernel ran (``take_kernels``)."""
from __future__ import annotations

import logging

import pytest
import torch

from kscale.quant import QuantSpec, _fast, fake_quantize, take_kernels
from kscale.quant.kernel_cache import KERNEL_CACHE

N = _fast.MIN_COMPILED_NUMEL  # the smallest tensor "auto" sends to a fast path


@pytest.fixture
def clean_cache(monkeypatch):
    monkeypatch.setattr(KERNEL_CACHE, "checked", {})
    monkeypatch.setattr(KERNEL_CACHE, "used", set())
    yield KERNEL_CACHE


def _w(seed=0):
    return torch.randn(N // 256, 256, generator=torch.Generator().manual_seed(seed))


def test_a_wrong_fast_kernel_is_caught_on_its_first_call(clean_cache, monkeypatch, caplog):
    def wrong(strategy, xb, code, spec):  # a "numba" kernel that is off by a little
        xb.copy_(_fast._eager(xb, code, spec.centered, spec.scale_bits, xb.dtype) + 1e-3)
        return True

    monkeypatch.setattr(_fast, "_run_numba_", wrong)
    spec = QuantSpec(4, "nf", 64)
    w = _w()
    eager = fake_quantize(w, spec, kernel="eager")
    take_kernels()
    with caplog.at_level(logging.WARNING, logger="kscale.quant._fast"):
        first = fake_quantize(w, spec)
        second = fake_quantize(_w(1), spec)
    assert torch.equal(first, eager)  # the reference's values, not the wrong kernel's
    assert torch.equal(second, fake_quantize(_w(1), spec, kernel="eager"))  # eager from now on
    warnings = [r for r in caplog.records if "differs from the eager reference" in r.getMessage()]
    assert len(warnings) == 1 and f"on {N} of {N} values" in warnings[0].getMessage()
    assert set(clean_cache.checked.values()) == {"eager"}
    assert take_kernels() == "eager"
    with pytest.raises(RuntimeError, match="differs from the eager reference"):
        clean_cache.checked.clear()
        fake_quantize(w, spec, kernel="compiled")  # asked for explicitly: an error, not a fallback


def test_a_crashing_fast_kernel_leaves_the_input_intact_and_falls_back(clean_cache, monkeypatch):
    def crash(strategy, xb, code, spec):
        xb.zero_()  # half-done work must not survive the fallback
        raise RuntimeError("backend exploded")

    monkeypatch.setattr(_fast, "_run_numba_", crash)
    monkeypatch.setitem(_fast._state, "broken", None)
    spec = QuantSpec(3, "int", 128)
    w = _w()
    assert torch.equal(fake_quantize(w, spec), fake_quantize(w, spec, kernel="eager"))
    assert _fast._state["broken"] is not None
    monkeypatch.setitem(_fast._state, "broken", None)


def test_a_correct_fast_kernel_passes_and_is_recorded(clean_cache):
    pytest.importorskip("numba")
    spec = QuantSpec(4, "int", 64)
    w = _w()
    take_kernels()
    got = fake_quantize(w, spec)
    assert torch.equal(got, fake_quantize(w, spec, kernel="eager"))
    verdicts = set(clean_cache.checked.values())
    assert verdicts <= {"numba", "inductor"} and verdicts
    assert take_kernels() == "+".join(sorted({*verdicts, "eager"}))  # the eager call above too
    assert take_kernels() is None
