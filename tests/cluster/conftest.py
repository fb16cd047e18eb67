"""A real single-node SLURM cluster for the ``cluster`` tests (scripts/slurm/cluster.sh).

The cluster starts once per session when the SLURM, munge and MariaDB binaries are present and
we are root (CI: ``.ci/run`` installs them); otherwise every test here is skipped with the
reason. ``SLURM_CONF`` goes only into the environment of the commands these tests run, so the
rest of the suite never sees the cluster.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm" / "cluster.sh"
#: what scripts/slurm/cluster.sh needs on PATH (Debian packages in the skip reason)
BINARIES = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
            "sbatch", "sacct", "scancel", "squeue")
PACKAGES = "slurmctld slurmd slurm-client munge slurmdbd mariadb-server"


def cluster_unavailable() -> str | None:
    """Why no cluster can start here (None: it can)."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (f"SLURM test cluster needs {', '.join(missing)} "
                f"(as root: apt-get install {PACKAGES}; .ci/run does this)")
    if os.geteuid() != 0:
        return "SLURM test cluster needs root (slurmd and munged run as root/munge)"
    return None


#: sacct states of a job that has not ended yet
_LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"})

@dataclass(frozen=True)
class Cluster:
    """A running cluster: ``env`` is os.environ plus its ``SLURM_CONF``."""

    directory: Path
    env: dict

    def slurm(self, *args: str, check: bool = True) -> str:
        """Run a SLURM client command (sacct, scancel, squeue, ...) against this cluster."""
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def states(self, job_id: str, timeout: float = 60) -> list[tuple[str, str]]:
        """``(JobID, State)`` of every record of a job (array tasks, requeued runs included).

        Waits until every record is final: the accounting database learns of a task's end a
        moment after the task's last row is written (slurmd -> slurmctld -> slurmdbd), so a
        launcher that has already returned can still read RUNNING or COMPLETING.
        """
        deadline = time.time() + timeout
        while True:
            out = self.slurm("sacct", "-j", job_id, "-X", "-n", "-P", "--duplicates",
                             "-o", "JobID,State")
            records = [tuple(line.split("|")) for line in out.splitlines() if line.strip()]
            live = [r for r in records if r[1].split()[0] in _LIVE_STATES]
            if not live or time.time() > deadline:
                return records
            time.sleep(0.5)

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no job is queued or running (jobs a test cancelled are gone)."""
        deadline = time.time() + timeout
        while self.slurm("squeue", "-h").strip():
            assert time.time() < deadline, self.slurm("squeue")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Cluster:
    reason = cluster_unavailable()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(SCRIPT), "start", str(directory)], capture_output=True,
                          text=True, timeout=180)
    if proc.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], timeout=120)
        pytest.fail(f"the SLURM test cluster did not start:\n{proc.stderr[-3000:]}")
    env = dict(os.environ, SLURM_CONF=str(directory / "slurm.conf"))
    try:
        yield Cluster(directory, env)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], timeout=120)
