"""The preemption signal's handler cannot pass for a failure of the cell in flight (no cluster
needed: the handler here fails the way submitit's did on the real one, whose ``scontrol
requeue`` was killed by the requeue it asked for)."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from kscale.sweep.cell import run_cell
from kscale.sweep.preemption import JobInterrupted, preemption_guard


@pytest.fixture
def failing_requeue_handler():
    """A launcher's USR2 handler whose requeue command dies (as submitit's did)."""
    calls = []

    def handler(signum, frame):
        calls.append(signum)
        raise subprocess.CalledProcessError(-15, ["scontrol", "requeue", "2_1"])

    old = signal.signal(signal.SIGUSR2, handler)
    yield handler, calls
    signal.signal(signal.SIGUSR2, old)


def _cell_interrupted_mid_evaluate():
    restored = []

    def evaluate():
        os.kill(os.getpid(), signal.SIGUSR2)  # delivered here, in the middle of the cell
        return {"nll_toy": 1.0}

    outcome = run_cell(cell=type("Cell", (), {"label": "int3"})(), quantize=lambda c: _Ledger(),
                       evaluate=evaluate, restore=lambda: restored.append(True))
    return outcome, restored


class _Ledger:
    def to_row(self):
        return {"bits_per_param": 3.25}


def test_without_the_guard_the_handlers_failure_is_recorded_as_a_cell_error(failing_requeue_handler):
    """The bug the guard exists for: an ``error`` row for a cell that did not fail."""
    outcome, _ = _cell_interrupted_mid_evaluate()
    assert outcome.status == "error" and "CalledProcessError" in outcome.error


def test_the_guard_stops_the_job_without_a_row_and_restores_the_handler(failing_requeue_handler):
    handler, calls = failing_requeue_handler
    with pytest.raises(JobInterrupted, match="scontrol"):
        with preemption_guard():
            _cell_interrupted_mid_evaluate()
    assert calls == [signal.SIGUSR2]  # the launcher's own handler still ran (it requeues)
    assert signal.getsignal(signal.SIGUSR2) is handler


def test_a_handler_that_exits_still_exits(failing_requeue_handler):
    """submitit's successful path: requeue, then ``sys.exit`` - a SystemExit passes unchanged."""
    signal.signal(signal.SIGUSR2, lambda s, f: (_ for _ in ()).throw(SystemExit(-1)))
    with pytest.raises(SystemExit):
        with preemption_guard():
            _cell_interrupted_mid_evaluate()


def test_no_launcher_handler_no_change():
    """The basic and joblib launchers install none: the guard leaves the signal as it is."""
    old = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        with preemption_guard():
            assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, old)
