"""Number formatting shared by the report's sections (one place, so every table reads alike)."""
from __future__ import annotations

import numpy as np

from kscale.fit.core import _group_label

bits_label = _group_label


def fmt(v) -> str:
    """4 significant digits, ``nan`` for missing values."""
    return "nan" if v is None or not np.isfinite(v) else f"{v:.4g}"


def pct(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2%}"


def safe_name(v) -> str:
    """A file-name-safe rendering of a configuration value."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(v))


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (cells already formatted; ``|`` inside cells escaped)."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return out + [""]
