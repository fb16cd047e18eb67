"""Without SLURM (a user's machine, no root): the script and the fixture say why, and nothing runs.

These need no cluster; they check the skip path the ``cluster`` tests take on such a machine.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm" / "cluster.sh"


def _bare_path(tmp_path: Path) -> str:
    """A PATH with the few tools the script itself needs, and none of SLURM, munge or MariaDB."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "id"):
        for prefix in ("/usr/bin", "/bin"):
            if Path(prefix, tool).exists():
                (bin_dir / tool).symlink_to(Path(prefix, tool))
                break
    return str(bin_dir)


def test_the_script_names_what_is_missing_and_starts_nothing(tmp_path):
    proc = subprocess.run(["/bin/bash", str(SCRIPT), "start", str(tmp_path / "c")], capture_output=True,
                          text=True, env={"PATH": _bare_path(tmp_path)}, timeout=60)
    assert proc.returncode == 3
    assert "missing binaries" in proc.stderr and "munged" in proc.stderr and "slurmctld" in proc.stderr
    assert "apt-get install slurmctld slurmd slurm-client munge slurmdbd mariadb-server" in proc.stderr
    assert not (tmp_path / "c" / "slurm.conf").exists()


def test_the_script_rejects_a_bad_call(tmp_path):
    proc = subprocess.run(["/bin/bash", str(SCRIPT), "launch", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_the_fixture_gives_its_reason_without_the_binaries(tmp_path, monkeypatch):
    from importlib import util

    spec = util.spec_from_file_location("cluster_conftest", Path(__file__).with_name("conftest.py"))
    conftest = util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, conftest)  # its dataclass looks itself up there
    spec.loader.exec_module(conftest)
    monkeypatch.setenv("PATH", _bare_path(tmp_path))
    reason = conftest.cluster_unavailable()
    assert reason and "apt-get install" in reason and "sbatch" in reason
