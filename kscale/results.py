"""The results table: one JSON row per sweep cell, written so that nothing is ever lost.

Layout of a study (``results_dir/<name>/``)::

    rows/<family>-<size>.<host>-<pid>-<start>.jsonl   one file per job *run* (never shared)
    table.parquet, table.csv                           merged export (``export_table``)

Why one file per job run: concurrent jobs of a sweep (joblib workers, a SLURM array) then never
write to the same file, so no locking is needed and a crash of one job cannot corrupt another's
rows. Each row is appended, flushed and ``fsync``-ed before the next cell starts, so a crash or
``kill -9`` loses at most the cell in flight; a torn last line (killed mid-write) is skipped by
:func:`load_results`. Re-running a study writes a new file; :func:`load_results` globs them all
and keeps the newest row per ``key``.

Contents:
    IDENTITY_COLUMNS, ROW_COLUMNS, FINAL_STATUSES   the row schema (docs/ARCHITECTURE.md)
    row_key(identity)                               the stable hash of a cell's identity
    ResultStore(study_dir, job_name)                append rows; which keys are finished
    load_results(path) -> DataFrame                 de-duplicated by key
    add_delta(df, metric)                           delta_<metric> = metric − same checkpoint's 16-bit
    export_table(study_dir)                         parquet (and CSV) for notebooks
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Fields that say *what* a cell is. ``key`` hashes these (see :func:`row_key`); ``n_params`` is
#: derived from the checkpoint, so it is recorded but not hashed (it is unknown before loading,
#: and resume must decide what to skip without loading the model).
IDENTITY_COLUMNS: tuple[str, ...] = (
    "family", "size", "checkpoint", "model_dtype", "model_options", "n_params",
    "method", "method_options", "format", "dtype", "bits", "blocksize", "centered", "exponent_bits",
    "scale_bits", "outlier_frac", "seed", "eval_name", "eval_config",
)
#: The storage format of rows written before formats were a column (kscale.quant.formats):
#: their key leaves ``format`` out, so resumed studies keep their keys.
DEFAULT_FORMAT = "blockwise"
MEASUREMENT_COLUMNS: tuple[str, ...] = ("bits_per_param", "total_bits", "n_quantized")
COST_COLUMNS: tuple[str, ...] = ("quant_s", "eval_s", "peak_mem_gb")
OUTCOME_COLUMNS: tuple[str, ...] = ("status", "error")
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "kscale_version", "git_sha", "torch_version", "transformers_version", "device",
    "timestamp", "hostname",
)
#: Columns every row has. Metrics (``{metric}_{dataset}``) and ``eval_*`` protocol fields from
#: ``EvalSuite.identity()`` come on top.
ROW_COLUMNS: tuple[str, ...] = (
    IDENTITY_COLUMNS + MEASUREMENT_COLUMNS + COST_COLUMNS + OUTCOME_COLUMNS
    + PROVENANCE_COLUMNS + ("key",)
)
#: Statuses
#:   ok    - quantized and evaluated
#:   nan   - evaluation produced a non-finite loss (typical at 2-3 bits): a result, not a bug
#:   oom   - out of memory (the largest size on a small GPU): a result, not a bug
#:   error - an unexpected exception: recorded for the record, retried on resume
STATUSES: tuple[str, ...] = ("ok", "nan", "oom", "error")
#: Rows with these statuses are finished: resume skips their keys. ``error`` rows are retried.
FINAL_STATUSES: frozenset[str] = frozenset({"ok", "nan", "oom"})

ROWS_SUBDIR = "rows"


def _canonical(value: Any) -> Any:
    """JSON-stable form: floats that are integers stay floats, tuples become lists."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def row_key(identity: Mapping[str, Any]) -> str:
    """A 16-hex-digit SHA-256 of the identity fields (sorted, canonical JSON).

    Two cells with equal identities are the same measurement, whichever process, launcher or
    run produced them; so the key is what resume skips on and what de-duplication keeps one of.

    >>> row_key({"bits": 4, "dtype": "int"}) == row_key({"dtype": "int", "bits": 4})
    True
    """
    identity = dict(identity)
    if identity.get("format") in (None, DEFAULT_FORMAT):
        identity.pop("format", None)  # the default format (and the baseline) hash as before formats
    for kind in ("act", "kv"):  # activations/KV at 16 bit (off) hash as before issue 20
        if identity.get(f"{kind}_bits") in (None, 16):
            for col in ("bits", "granularity", "dtype"):
                identity.pop(f"{kind}_{col}", None)
    if identity.get("kv_site") is None:
        identity.pop("kv_site", None)
    text = json.dumps(_canonical(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"result rows hold plain values; got {type(value).__name__}: {value!r}")


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


class ResultStore:
    """Append-only rows of one job under ``study_dir/rows/``.

    Args:
        study_dir: ``results_dir/<name>``.
        job_name: a readable prefix for this job's file (``toy-s1``); the file name adds host,
            pid and start time so that two jobs never share a file.

    The file is created lazily on the first row, so a job that has nothing left to do (or is
    rejected) writes nothing.
    """

    def __init__(self, study_dir: str | os.PathLike, job_name: str = "job") -> None:
        self.study_dir = Path(study_dir)
        self.rows_dir = self.study_dir / ROWS_SUBDIR
        stamp = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        self.path = self.rows_dir / f"{_safe_name(job_name)}.{_safe_name(stamp)}.jsonl"
        self._fh = None

    def finished_keys(self) -> set[str]:
        """Keys of every row in the study whose status is final (ok/nan/oom)."""
        return {
            row["key"] for row in iter_rows(self.study_dir)
            if row.get("status") in FINAL_STATUSES and "key" in row
        }

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row durably: append, flush, fsync (a crash after this keeps the row)."""
        if "key" not in row:
            raise ValueError(f"a result row needs a 'key'; got columns {sorted(row)}")
        line = json.dumps(dict(row), default=_json_default, allow_nan=True) + "\n"
        if self._fh is None:
            self.rows_dir.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _row_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.exists():
        return []
    rows = path / ROWS_SUBDIR
    base = rows if rows.is_dir() else path
    return sorted(base.rglob("*.jsonl"))


def iter_rows(path: str | os.PathLike) -> Iterable[dict[str, Any]]:
    """Every parseable row under ``path`` (a study dir, its ``rows/`` dir or one JSONL file).

    A line that does not parse is skipped: the last line of a file may be torn by ``kill -9``
    mid-write. A torn line anywhere else means the file was edited or the disk lied, so it is
    logged as a warning.
    """
    for file in _row_files(Path(path)):
        with open(file, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        complete = lines[:-1]  # the text after the last newline is a torn (or empty) tail
        if lines[-1].strip():
            log.info("skipping a torn last line in %s (the job was killed mid-write)", file)
        for i, line in enumerate(complete):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("skipping unparseable line %d in %s", i + 1, file)


def load_results(path: str | os.PathLike, *, all_statuses: bool = True,
                 delta: str | Iterable[str] | None = None):
    """Read a study back as a ``pandas.DataFrame``, one row per ``key``.

    Args:
        path: the study directory (``results_dir/<name>``), its ``rows/`` folder, a JSONL file,
            or an exported ``.parquet``/``.csv`` table.
        all_statuses: keep ``error`` rows too (default). With False only final rows
            (ok/nan/oom) are kept.
        delta: metric name(s) whose degradation ``delta_<metric>`` to add (:func:`add_delta`).

    Returns:
        The newest row per ``key`` (by ``timestamp``), sorted by family, model size, method,
        dtype, bits and blocksize; an empty frame with :data:`ROW_COLUMNS` if there is nothing.
    """
    df = _load_results(path, all_statuses=all_statuses)
    for metric in ([delta] if isinstance(delta, str) else list(delta or ())):
        df = add_delta(df, metric)
    return df


def _load_results(path: str | os.PathLike, *, all_statuses: bool):
    import pandas as pd  # on use: kscale.results (the sweeper reads it) stays free of pandas/numpy

    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    rows = list(iter_rows(path))
    if not rows:
        return pd.DataFrame(columns=list(ROW_COLUMNS))
    df = pd.DataFrame(rows)
    if "dtype" in df:  # rows from before formats were a column are blockwise (baseline: none)
        missing = df["format"].isna() if "format" in df else True
        df["format"] = df["format"] if "format" in df else None
        df.loc[missing & df["dtype"].notna(), "format"] = DEFAULT_FORMAT
    if not all_statuses and "status" in df:
        df = df[df["status"].isin(FINAL_STATUSES)]
    # A final row beats an error row for the same key, then the newest wins.
    df = df.assign(_final=df["status"].isin(FINAL_STATUSES) if "status" in df else True)
    sort_cols = ["_final"] + (["timestamp"] if "timestamp" in df else [])
    df = df.sort_values(sort_cols, kind="stable").drop_duplicates("key", keep="last")
    order = [c for c in ("family", "n_params", "size", "method", "format", "dtype", "bits", "blocksize",
                         "seed") if c in df]
    df = df.drop(columns="_final").sort_values(order, kind="stable", na_position="first")
    leading = [c for c in ROW_COLUMNS if c in df]
    return df[leading + [c for c in df.columns if c not in leading]].reset_index(drop=True)


def _private_tmp(path: Path) -> Path:
    """A temporary name no other writer shares: two sweeps of one study (two SLURM commands) may
    export at the same moment, and with one shared name the first ``os.replace`` would publish
    the other's half-written file and the second would find its own gone."""
    stamp = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    return path.with_name(f".{path.name}.{_safe_name(stamp)}.tmp")


def export_table(study_dir: str | os.PathLike, *, csv: bool = True) -> dict[str, Path]:
    """Write ``table.parquet`` (and ``table.csv``) next to ``rows/`` for notebooks.

    Columns holding mixed types (e.g. ``exponent_bits`` None or int) are kept as objects in
    CSV and cast to strings in parquet only if pyarrow cannot store them otherwise.
    """
    study_dir = Path(study_dir)
    df = load_results(study_dir)
    out: dict[str, Path] = {}
    if df.empty:
        return out
    parquet = study_dir / "table.parquet"
    tmp = _private_tmp(parquet)
    try:
        df.to_parquet(tmp, index=False)
    except (TypeError, ValueError) as err:  # pyarrow cannot type a mixed column
        log.info("parquet export: casting mixed columns to strings (%s)", err)
        fixed = df.copy()
        for col in fixed.columns:
            if fixed[col].dtype == object:
                fixed[col] = fixed[col].map(lambda v: None if v is None else str(v))
        fixed.to_parquet(tmp, index=False)
    os.replace(tmp, parquet)  # atomic: a reader never sees half a table
    out["parquet"] = parquet
    if csv:
        path = study_dir / "table.csv"
        tmp = _private_tmp(path)
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
        out["csv"] = path
    return out


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------
# Degradation: a cell's metric minus the same checkpoint's 16-bit metric (issue 11 §2).
# --------------------------------------------------------------------------------------------

#: Columns that say "the same checkpoint, evaluated the same way". A quantized cell is compared
#: with the 16-bit row that agrees on all of these that the table has (``revision`` and
#: ``n_tokens`` tell checkpoints of one size apart along training; a table without them has one
#: checkpoint per size). Quantization settings and the cell's seed are deliberately not here.
DELTA_KEYS: tuple[str, ...] = (
    "family", "size", "checkpoint", "revision", "n_tokens", "model_dtype", "model_options",
    "eval_name", "eval_config",
)
#: ``method`` and ``bits`` of the unquantized baseline row of a checkpoint.
BASELINE_METHOD = "none"
BASELINE_BITS = 16


class MissingBaselineWarning(UserWarning):
    """Some cells have no 16-bit row of the same checkpoint: their degradation is NaN."""


def _key_frame(df, keys: list[str]):
    """Group keys as strings, so that None/NaN (an unknown revision) match each other."""
    return df[keys].astype(object).where(df[keys].notna(), "<null>").astype(str)


def add_delta(df, metric: str, *, keys: tuple[str, ...] = DELTA_KEYS):
    """Add ``delta_<metric>``: each row's ``metric`` minus its checkpoint's 16-bit ``metric``.

    Degradation (Ouyang et al. 2025's QiD, Kumar et al. 2025's δ_PTQ) is what quantization did to
    *this* checkpoint, so the baseline must be the same family, size, revision / training tokens
    and evaluation; ``keys`` lists the columns that must agree (those missing from the table are
    ignored: no ``revision`` column means one revision per size). The baseline row is the one with
    ``method == "none"`` and ``bits == 16`` (status ok; activations and KV cache at 16 bit too,
    where the table has ``act_bits``/``kv_bits``); its own delta is 0.

    A cell without a baseline gets NaN, never 0, and a :class:`MissingBaselineWarning` names how
    many and which checkpoints. Several baseline rows for one checkpoint (reruns of a different
    eval batch size...) are averaged, with a log message.

    Args:
        df: a results table (``load_results``).
        metric: the metric column, e.g. ``nll_wikitext2``.
        keys: columns defining "same checkpoint, same eval".

    Returns:
        A copy of ``df`` with the new column.

    Raises:
        ValueError: ``metric`` is not a column, or the table has no ``method``/``bits`` columns.
    """
    import numpy as np  # on use: kscale.results (the sweeper reads it) stays free of pandas/numpy

    if metric not in df.columns:
        raise ValueError(f"metric column {metric!r} is not in the results table; columns: {sorted(df.columns)}")
    missing = [c for c in ("method", "bits") if c not in df.columns]
    if missing:
        raise ValueError(f"add_delta needs columns 'method' and 'bits' to find 16-bit baselines; missing {missing}")
    out = df.copy()
    col = f"delta_{metric}"
    if out.empty:
        out[col] = []
        return out
    use = [k for k in keys if k in out.columns]
    kf = _key_frame(out, use) if use else None
    gid = kf.apply("\x1f".join, axis=1) if use else _all_same(out)
    values = _numeric(out[metric])
    is_base = (out["method"].astype(str) == BASELINE_METHOD) & (_numeric(out["bits"]) == BASELINE_BITS)
    for runtime in ("act_bits", "kv_bits"):  # W16A8 / KV4 rows are cells, not the baseline
        if runtime in out.columns:
            is_base &= _numeric(out[runtime]).fillna(BASELINE_BITS) == BASELINE_BITS
    if "status" in out.columns:
        is_base &= out["status"].astype(str) == "ok"
    is_base &= np.isfinite(values)
    base = values[is_base].groupby(gid[is_base]).agg(["mean", "size"])
    dup = base[base["size"] > 1]
    if len(dup):
        log.info("add_delta %s: %d checkpoint(s) have several 16-bit rows; their mean is the baseline", metric, len(dup))
    ref = gid.map(base["mean"])
    out[col] = values - ref.astype(float)
    lost = ref.isna() & np.isfinite(values)
    if lost.any():
        names = sorted(set(gid[lost]))
        shown = ", ".join(n.replace("\x1f", "/") for n in names[:3]) + (" ..." if len(names) > 3 else "")
        msg = (f"add_delta {metric}: {int(lost.sum())} of {len(out)} rows have no 16-bit baseline "
               f"(method={BASELINE_METHOD!r}, bits={BASELINE_BITS}, status ok) for the same {'/'.join(use)}: "
               f"their {col} is NaN. Checkpoints without a baseline: {shown}")
        log.warning(msg)
        warnings.warn(msg, MissingBaselineWarning, stacklevel=2)
    return out


def _numeric(series):
    import pandas as pd  # on use: kscale.results (the sweeper reads it) stays free of pandas/numpy

    return pd.to_numeric(series, errors="coerce").astype(float)


def _all_same(df):
    import pandas as pd  # on use: kscale.results (the sweeper reads it) stays free of pandas/numpy

    return pd.Series("all", index=df.index)
