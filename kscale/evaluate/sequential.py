"""Sequential evaluation: score units (windows, items) in a fixed seeded order and stop once the
paired difference to the 16-bit model is known to a target SE.

Why: a cell's question is how much worse it is than its own 16-bit model; the paired ``dnll``
of most cells reaches a useful SE after a small fraction of WikiText-2, and the rest of the
test set only shrinks an error bar nobody reads. The order is one seeded permutation shared by
every cell, so all cells of a model are scored on the same prefix. The stop is checked after
each chunk (a batch's worth of units), never before ``min_units``, and the set is the cap.

Stopping on the SE makes the SE estimate slightly optimistic for early stops (the usual
optional-stopping bias); the ``min_windows`` floor keeps that small. The 16-bit reference pass
always covers the full set, so its absolute numbers are the protocol's.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from kscale.evaluate.specs import SequentialSpec


def evaluation_order(n_units: int, seq: SequentialSpec | None, *, active: bool) -> np.ndarray:
    """Unit indices in scoring order: a seeded permutation when sequential, else ``0..n-1``."""
    if not active or seq is None:
        return np.arange(n_units)
    return np.random.default_rng(seq.order_seed).permutation(n_units)


def chunked(order: np.ndarray, size: int) -> Iterator[np.ndarray]:
    size = max(1, int(size))
    for a in range(0, len(order), size):
        yield order[a : a + size]


def run_until(order: np.ndarray, chunk: int, score: Callable[[np.ndarray], None],
              se_now: Callable[[int], float] | None, target: float | None, min_units: int) -> int:
    """Score ``order`` chunk by chunk with ``score(units)``; after each chunk stop once
    ``se_now(units_done) <= target`` (with at least ``min_units`` done). Returns units scored."""
    done = 0
    for units in chunked(order, chunk if target is not None else len(order)):
        score(units)
        done += len(units)
        if target is None or se_now is None or done < min_units or done >= len(order):
            continue
        se = se_now(done)
        if math.isfinite(se) and se <= target:
            break
    return done
