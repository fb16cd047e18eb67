"""Checks a sweep runs before any work, so a setting that cannot work costs seconds, not a job.

Each check turns what would otherwise be a long traceback minutes into a sweep (or a hang)
into one line naming the setting to change:

* the study folder can be written (``results_dir``), tried by writing a file, since a
  permission bit says nothing to root and a read-only mount says nothing to ``os.access``;
* ``wandb.mode=online`` has an API key and can reach its server (:func:`kscale.tracking.check_tracking`);
* ``hydra/launcher=submitit_slurm``: ``sbatch`` answers (``sbatch --test-only``: asks the
  controller whether the job could be scheduled, submits nothing), checked before submitit
  writes its pickles for jobs that would never be submitted.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kscale.tracking import TrackingError, check_tracking

#: Seconds ``sbatch --test-only`` may take before the cluster counts as not answering.
SBATCH_TIMEOUT_S = 20.0


class PreflightError(ValueError):
    """A setting that cannot work on this machine (one line; raised before any work)."""


def check_writable(study_dir: str | Path, *, setting: str = "results_dir") -> None:
    """Create ``study_dir/rows`` if needed and write (then remove) a file there.

    Raises:
        PreflightError: naming ``setting`` and the OS's reason.
    """
    rows = Path(study_dir) / "rows"
    try:
        rows.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=rows, prefix=".write-check-"):
            pass
    except OSError as err:
        raise PreflightError(
            f"invalid override {setting}: cannot write the study's rows to {rows} "
            f"({err.strerror or err}); set {setting}= to a folder you can write") from None


def is_slurm_launcher(launcher: Mapping[str, Any] | None) -> bool:
    """Whether a Hydra launcher config is submitit's SLURM launcher."""
    target = str((launcher or {}).get("_target_", ""))
    return target.endswith("SlurmLauncher")


def check_sbatch(launcher: Mapping[str, Any], *, timeout: float = SBATCH_TIMEOUT_S) -> None:
    """``sbatch --test-only`` with the launcher's partition/account/qos: does SLURM answer?

    Raises:
        PreflightError: no ``sbatch`` on PATH, it timed out, or the controller refused.
    """
    sbatch = shutil.which("sbatch")
    what = "hydra/launcher=submitit_slurm"
    if sbatch is None:
        raise PreflightError(f"invalid override {what}: no `sbatch` on PATH (SLURM's client commands "
                             "are needed); run on a login node, or use hydra/launcher=submitit_local or joblib")
    cmd = [sbatch, "--test-only", "--job-name=kscale-preflight", "--wrap=true"]
    for key in ("partition", "account", "qos"):
        if launcher.get(key):
            cmd.append(f"--{key}={launcher[key]}")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PreflightError(f"invalid override {what}: `sbatch` did not answer within {timeout:.0f} s "
                             "(is slurmctld reachable?)") from None
    if done.returncode != 0:
        said = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = said[-1] if said else f"exit code {done.returncode}"  # the fatal line comes last
        raise PreflightError(f"invalid override {what}: `{' '.join(cmd[1:])}` failed: {reason}")


def preflight(plans: Iterable[Any], *, launcher: Mapping[str, Any] | None = None) -> None:
    """Every check for the plans a sweep is about to run (``SweepPlan`` s), in cost order.

    Raises:
        PreflightError: the first setting that cannot work (tracking errors included).
    """
    seen: set[Any] = set()
    for plan in plans:
        check_writable(plan.study_dir)
        if plan.tracking not in seen:
            seen.add(plan.tracking)
            try:
                check_tracking(plan.tracking)
            except TrackingError as err:
                raise PreflightError(str(err)) from None
    if is_slurm_launcher(launcher):
        check_sbatch(launcher or {})
