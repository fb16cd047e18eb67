"""Timing that holds on a noisy machine: alternate the compared commands, report median ratios.

Why: on a shared machine a single best-of-a-few timing of each command, taken one after the
other, measures whichever command ran during the quieter seconds (issue 19 §5: the same script
gave rolling 0.87x, 0.95x and 1.08x lm-eval). Here every repeat runs each command once, in an
order that alternates between repeats (A B, B A, ...), and a ratio is computed *per repeat*, from
timings seconds apart; the median of those ratios, with their min-max spread, is the figure.
A target is met when the median is. Every printed figure carries the load average.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping

#: repeats when a script is not told otherwise (issue 19: at least 5)
DEFAULT_REPEATS = 5


def load() -> str:
    """``load 3.2/2 cpus``: the 1-minute load average next to the CPU count."""
    try:
        return f"load {os.getloadavg()[0]:.1f}/{os.cpu_count()} cpus"
    except OSError:  # pragma: no cover - no getloadavg
        return "load ?"


def alternate(commands: Mapping[str, Callable[[], object]], repeats: int = DEFAULT_REPEATS,
              warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per repeat of every command; the order rotates each repeat so no command always
    runs first (or last) in a pair."""
    names = list(commands)
    if warmup:
        for name in names:
            commands[name]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(max(1, repeats)):
        order = names[r % len(names):] + names[: r % len(names)]
        if r % 2:
            order = order[::-1]
        for name in order:
            t0 = time.perf_counter()
            commands[name]()
            out[name].append(time.perf_counter() - t0)
    return out


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Per-repeat ratios (paired: both timings of one repeat were taken seconds apart)."""
    return [a / b for a, b in zip(numerator, denominator)]


def summary(values: list[float]) -> tuple[float, float, float]:
    """``(median, min, max)``."""
    return statistics.median(values), min(values), max(values)


def fmt(values: list[float], unit: str = "x") -> str:
    """``1.12x (0.98-1.20, n=5)``: the median and the spread of the per-repeat ratios."""
    med, lo, hi = summary(values)
    return f"{med:.2f}{unit} ({lo:.2f}-{hi:.2f}, n={len(values)})"


def verdict(values: list[float], target: float, higher_is_better: bool = True) -> str:
    med = statistics.median(values)
    ok = med >= target if higher_is_better else med <= target
    return "met" if ok else "MISSED"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
