"""All mutable state of the blockwise quantization kernels, in one object (issue 18 §5).

Why one object: the kernels keep a process setting, failure flags, compiled graphs, lookup
tables, compile-time accounting and now the verdict of each fast path's self-check; spread over
module-level dicts they were impossible to inspect or reset as a whole. :data:`KERNEL_CACHE` is
the only instance; ``kscale.quant._fast`` reads and writes it, nothing else should.

Self-check: the first time a fast path (``numba`` or ``inductor``) runs for a given (format
config, block size, device, dtype), its result on that tensor is compared bit for bit with the
eager reference; on a mismatch or an exception that key runs eager from then on, with one
warning. ``checked`` holds the verdicts, ``used`` the kernels that ran since the last
:meth:`KernelCache.take_used` (the row's ``kernel`` column).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KERNEL_CACHE", "KernelCache"]

#: the value a self-check stores for a key whose fast path failed it
EAGER = "eager"


@dataclass
class KernelCache:
    """Process-wide kernel state (see the module docstring)."""

    #: the process setting (``mode``: auto/eager/compiled), inductor's failure (``broken``) and
    #: numba's (``numba``); kept as one dict so tests can monkeypatch a single entry
    state: dict[str, Any] = field(default_factory=lambda: {
        "mode": os.environ.get("KSCALE_QUANT_KERNEL", "auto"), "broken": None, "numba": None})
    compiled: dict[str, Any] = field(default_factory=dict)          # torch.compile'd graphs by name
    luts: dict[tuple, Any] = field(default_factory=dict)            # bit-pattern tables (lut)
    lut1s: dict[tuple, Any] = field(default_factory=dict)           # single-correction tables (lut1)
    compile_time: dict[str, float] = field(default_factory=lambda: {"seconds": 0.0, "compiles": 0, "taken": 0.0})
    checked: dict[tuple, str] = field(default_factory=dict)         # self-check verdict per key
    used: set[str] = field(default_factory=set)                     # kernels run since take_used()

    def take_used(self) -> str | None:
        """The kernels that ran since the previous call, ``+``-joined (``numba``, ``inductor``,
        ``eager``), or ``None`` if none ran; clears the record."""
        used = "+".join(sorted(self.used)) or None
        self.used.clear()
        return used

    def clear_tables(self) -> None:
        """Drop the lookup tables and self-check verdicts (graphs and settings stay)."""
        self.luts.clear()
        self.lut1s.clear()
        self.checked.clear()


KERNEL_CACHE = KernelCache()
