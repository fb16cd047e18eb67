"""Progress over the cells of a job: a tqdm bar (cell, ETA) and one summary line per cell."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

#: Metrics shown in the one-line summary, first match per prefix.
_SUMMARY_PREFIXES: tuple[str, ...] = ("ppl_", "kl_", "acc_mean")


def summarize_row(row: Mapping[str, Any], label: str) -> str:
    """``toy-s1 int4-b64-rtn ok bits/param=4.25 ppl_toy=12.31 kl_toy=0.0412 (q 0.1s, e 1.2s)``."""
    model = f"{row.get('family')}-{row.get('size')}"
    if row.get("revision"):
        model += f"@{row['revision']}"
    parts = [model, label, str(row.get("status"))]
    bpp = row.get("bits_per_param")
    if isinstance(bpp, (int, float)):
        parts.append(f"bits/param={bpp:.3f}")
    for prefix in _SUMMARY_PREFIXES:
        for name, value in row.items():
            if name.startswith(prefix) and isinstance(value, float):
                parts.append(f"{name}={value:.4g}")
                break
    if row.get("error"):
        parts.append(f"error={row['error']}")
    parts.append(f"(q {row.get('quant_s', 0):.1f}s, e {row.get('eval_s', 0):.1f}s)")
    return " ".join(parts)


class CellProgress:
    """A tqdm bar over a job's cells; ``start(label)`` shows the cell, ``done(row)`` reports it.

    With ``enabled=False`` (or tqdm's own TQDM_DISABLE) only the log lines remain.
    """

    def __init__(self, total: int, *, desc: str, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.bar = tqdm(total=total, desc=desc, unit="cell", disable=not enabled, dynamic_ncols=True)

    def start(self, label: str) -> None:
        self.bar.set_postfix_str(label, refresh=True)

    def done(self, row: Mapping[str, Any], label: str) -> None:
        line = summarize_row(row, label)
        if logging.getLogger().handlers and log.isEnabledFor(logging.INFO):
            log.info("cell done: %s", line)  # Hydra prints it and keeps it in the job log
        elif not self.bar.disable:
            self.bar.write(line)  # a notebook without logging still sees the summary
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
