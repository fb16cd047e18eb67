"""Run one cell against a loaded model: quantize in place, evaluate, classify the outcome.

Expected failures are results, not crashes: a non-finite loss (2-3 bit models can diverge) is
``status="nan"``, running out of GPU memory is ``status="oom"``; the sweep records the row and
goes on. Anything else is ``status="error"`` with the exception text; the job finishes its other
cells and then fails (see :func:`kscale.sweep.job.run_job`), so a bug still gives a non-zero exit.
"""
from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kscale.sweep.grid import CellSpec

log = logging.getLogger(__name__)

#: Metric prefixes whose non-finite value makes a cell ``nan`` (loss-like quantities).
LOSS_PREFIXES: tuple[str, ...] = ("nll_", "ppl_", "kl_", "bpb_")


@dataclass
class CellOutcome:
    """What running a cell produced (the non-identity part of its row)."""

    status: str
    error: str | None = None
    measurements: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    quant_s: float = 0.0
    eval_s: float = 0.0
    peak_mem_gb: float | None = None
    exception: BaseException | None = None

    def to_row(self) -> dict[str, Any]:
        row = dict(self.measurements)
        row.update(self.metrics)
        row.update(quant_s=self.quant_s, eval_s=self.eval_s, peak_mem_gb=self.peak_mem_gb,
                   status=self.status, error=self.error)
        return row


def is_oom(err: BaseException) -> bool:
    """CUDA (or MPS/XPU) out-of-memory, whichever exception type the torch build raises."""
    try:
        import torch

        if isinstance(err, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(err, (RuntimeError, MemoryError)) and "out of memory" in str(err).lower()


def nonfinite_metrics(metrics: Mapping[str, Any]) -> list[str]:
    return sorted(
        name for name, value in metrics.items()
        if name.startswith(LOSS_PREFIXES) and isinstance(value, float) and not math.isfinite(value)
        and not name.endswith("_se")  # an SE is NaN where it cannot be estimated (one window)
    )


def _reset_peak_memory(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device: str) -> float:
    """Peak memory: CUDA allocator peak since the cell started; on CPU the process's peak RSS.

    The CPU figure is the process high-water mark (``getrusage``), so it never decreases across
    cells; it answers "how much RAM did this job need", which is what a CPU user plans with.
    """
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes vs KiB
    except ImportError:  # Windows
        return float("nan")


def run_cell(
    cell: CellSpec,
    *,
    quantize: Callable[[CellSpec], Any],
    evaluate: Callable[[], Mapping[str, float]],
    restore: Callable[[], None],
    device: str = "cpu",
) -> CellOutcome:
    """Quantize, evaluate and restore; never raises for a cell-level failure.

    Args:
        cell: what to run.
        quantize: ``cell -> BitLedger`` (in place; for the baseline, the 16-bit bit count).
        evaluate: ``() -> {metric}_{dataset}`` on the current (quantized) weights.
        restore: puts the 16-bit weights back (always called, even after a failure).
        device: for the memory figure.
    """
    outcome = CellOutcome(status="ok")
    _reset_peak_memory(device)
    phase = "quantize"
    try:
        t0 = time.perf_counter()
        ledger = quantize(cell)
        outcome.quant_s = time.perf_counter() - t0
        outcome.measurements = dict(ledger.to_row())
        phase = "evaluate"
        t0 = time.perf_counter()
        outcome.metrics = {k: (float(v) if isinstance(v, (int, float)) else v)
                           for k, v in evaluate().items()}
        outcome.eval_s = time.perf_counter() - t0
        bad = nonfinite_metrics(outcome.metrics)
        if bad:
            outcome.status = "nan"
            outcome.error = f"non-finite {', '.join(bad)}"
    except Exception as err:  # noqa: BLE001 - classified below, re-raised by the job if a bug
        if is_oom(err):
            outcome.status = "oom"
            outcome.error = f"out of memory during {phase}: {str(err).splitlines()[0]}"
            _empty_cache(device)
        else:
            outcome.status = "error"
            outcome.error = f"{type(err).__name__} during {phase}: {err}"
            outcome.exception = err
            log.error("cell %s failed during %s:\n%s", cell.label, phase, traceback.format_exc())
    finally:
        outcome.peak_mem_gb = peak_memory_gb(device)
        restore()
    return outcome


def _empty_cache(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
