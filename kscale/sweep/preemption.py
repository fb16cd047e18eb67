"""A job interrupted by SLURM writes no row for the cell in flight.

SLURM warns a job before preempting it or at ``--signal`` time before its limit with a signal
(``USR2`` under submitit, ``hydra.launcher.signal_delay_s``). submitit's handler then runs
*inside* whatever the job was doing, calls ``scontrol requeue`` and exits. Two things can go
wrong in the middle of a cell, both seen on a real cluster (tests/cluster):

- the requeue itself kills the job's processes, sometimes ``scontrol`` before it returns; the
  handler then raises ``CalledProcessError`` out of the model's forward pass, the cell loop takes
  it for a failure of the cell, writes an ``error`` row for it and goes on computing while SLURM
  is already killing the job (the requeued job then writes the same key again);
- any other exception the handler raises would be recorded the same way.

:func:`preemption_guard` wraps the handler a launcher installed (nothing is installed when there
is none: the basic and joblib launchers are untouched): whatever the handler raises becomes
:class:`JobInterrupted`, a ``BaseException`` that no cell catches, so the job stops without a row
for the cell in flight; the requeued job recomputes that cell, skips every finished one.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: submitit's own variable naming its preemption signal (default USR2)
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


class JobInterrupted(BaseException):
    """The job was told to stop (preemption or time limit); not a failure of the cell in flight."""


def preemption_signal() -> signal.Signals | None:
    name = os.environ.get(PREEMPT_SIGNAL_ENV, "USR2").upper().removeprefix("SIG")
    return getattr(signal.Signals, f"SIG{name}", None)


@contextmanager
def preemption_guard() -> Iterator[None]:
    """While the job's cells run: the launcher's preemption handler cannot pass for a cell error."""
    sig = preemption_signal()
    original = signal.getsignal(sig) if sig is not None else None
    if not callable(original) or threading.current_thread() is not threading.main_thread():
        yield  # no launcher handler to guard (or signals cannot be set from this thread)
        return

    def handler(signum, frame):
        log.warning("received %s: the job stops; the cell in flight is not written and is "
                    "recomputed when the job resumes", signal.Signals(signum).name)
        try:
            original(signum, frame)
        except Exception as err:  # noqa: BLE001 - any failure of the handler stops the job
            raise JobInterrupted(f"{signal.Signals(signum).name} handler: {err}") from err

    signal.signal(sig, handler)
    try:
        yield
    finally:
        signal.signal(sig, original)
