"""Where kscale finds shared data and keeps its caches.

Data is never copied into the project: the local reference data (WikiText-2, PTB,
LAMBADA, PIQA, HellaSwag, WinoGrande, tokenizers, tiny checkpoints) is read from
``$KSCALE_DATA_DIR`` or, if unset, from ``../shared/data`` beside the project root.
Caches (tokenized eval streams, the trained toy ladder) go to ``$KSCALE_CACHE_DIR``
or ``~/.cache/kscale``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """``$KSCALE_DATA_DIR``, else ``<project root>/../shared/data``."""
    env = os.environ.get("KSCALE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return (PROJECT_ROOT.parent / "shared" / "data").resolve()


def default_cache_dir() -> Path:
    """``$KSCALE_CACHE_DIR``, else ``$XDG_CACHE_HOME/kscale`` (``~/.cache/kscale``)."""
    env = os.environ.get("KSCALE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kscale"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (created if
    needed), so a reader, or another job writing the same cache entry, never sees half of it.

    Raises:
        OSError: the folder cannot be created or written (callers of a cache decide whether
            that matters: an unwritable cache is recomputed next time).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
