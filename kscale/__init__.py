"""kscale: k-bit inference scaling-law studies.

Quantize every size of a model family to k bits, count every stored bit, evaluate,
and fit scaling laws over total model bits (Dettmers & Zettlemoyer 2022).
"""
from __future__ import annotations

__version__ = "0.1.0"
