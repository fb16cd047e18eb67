"""llama.cpp's own quantizer, ``ggml_quantize_chunk``, called through ctypes (a test/benchmark reference).

kscale's GGUF kernels are checked byte for byte against ggml's C reference. PyPI
``libggml-python`` ships a prebuilt ``libggml-base`` (no Python bindings), so this module finds the
shared library next to the ``libggml`` package and declares the one C function it needs. It is a
dev-only dependency: importing this module never needs it; calling :func:`ggml_quantize` without it
raises one clear :class:`RuntimeError` (tests skip on :func:`ggml_available`).
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
import torch


def _library_path() -> Path:
    import libggml  # PyPI libggml-python (dev extra)

    root = Path(libggml.__file__).resolve().parent
    for sub in ("lib64", "lib"):
        for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
            if (root / sub / name).exists():
                return root / sub / name
    raise RuntimeError(f"libggml-python is installed at {root} but has no libggml-base shared library")


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(_library_path()))
    except ImportError as err:
        raise RuntimeError(
            "ggml's reference quantizer needs the dev dependency libggml-python (pip install -e '.[dev]')"
        ) from err
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def ggml_available() -> bool:
    """True when libggml-python's shared library loads (the byte-exact tests need it)."""
    try:
        _library()
    except (RuntimeError, OSError):
        return False
    return True


def ggml_row_bytes(ggml_type: int, n_per_row: int) -> int:
    """Bytes of one quantized row, as ggml computes them (``ggml_row_size``)."""
    return int(_library().ggml_row_size(int(ggml_type), int(n_per_row)))


def ggml_quantize(w: torch.Tensor, ggml_type: int, imatrix: torch.Tensor | None = None) -> torch.Tensor:
    """``ggml_quantize_chunk(type, w, dst, 0, rows, n_per_row, imatrix)``: ggml's bytes, uint8 [rows, row_bytes].

    ``w`` is a float32 matrix [rows, n_per_row]; ``imatrix`` (one weight per column) or None.
    ggml aborts the process on a row length it cannot block, so the caller checks it first.
    """
    lib = _library()
    src = np.ascontiguousarray(w.detach().cpu().numpy(), dtype=np.float32)
    if src.ndim != 2:
        raise ValueError(f"ggml_quantize takes a 2-D matrix; got shape {tuple(src.shape)}")
    rows, n_per_row = src.shape
    row_bytes = ggml_row_bytes(ggml_type, n_per_row)
    dst = np.zeros((rows, row_bytes), dtype=np.uint8)
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix.detach().cpu().numpy(), dtype=np.float32)
        if qw.shape != (n_per_row,):
            raise ValueError(f"imatrix must have one value per column ({n_per_row}); got shape {qw.shape}")
    written = lib.ggml_quantize_chunk(int(ggml_type), src.ctypes.data, dst.ctypes.data, 0, rows, n_per_row,
                                      None if qw is None else qw.ctypes.data)
    if written != dst.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes; expected {dst.nbytes}")
    return torch.from_numpy(dst)
