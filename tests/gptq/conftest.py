"""GPTQ tests: small dense linear algebra, run single-threaded.

On a loaded 2-core machine OpenMP's spinning threads make 128x128 factorizations ~500x slower
(0.2 s instead of 0.3 ms); one thread keeps this area's tests fast and deterministic.
"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
