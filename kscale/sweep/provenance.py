"""Provenance columns: which code, libraries and host produced a row."""
from __future__ import annotations

import platform
import socket
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def provenance_static() -> dict[str, Any]:
    """Versions and host: the same for every row of a process, computed once."""
    import kscale

    versions = {}
    for name in ("torch", "transformers"):
        try:
            versions[f"{name}_version"] = __import__(name).__version__
        except ImportError:
            versions[f"{name}_version"] = None
    return {
        "kscale_version": kscale.__version__,
        "git_sha": git_sha(),
        **versions,
        "hostname": socket.gethostname(),
        "python_version": platform.python_version(),
    }


def git_sha() -> str | None:
    """The project's commit (with ``-dirty`` if the tree has changes), or None outside git."""
    from kscale.paths import PROJECT_ROOT

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
