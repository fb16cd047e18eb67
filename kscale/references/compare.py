"""Our results beside a published table, cell by cell, with the protocol checked first.

``compare_study(df, "gptq-opt-wikitext2")`` matches every row of ``df`` (a
``kscale.results.load_results`` table) that the published table has a value for -- same
family, size, method and bits, at the table's granularity -- and reports ours, published, the
difference, and whether the *protocol* matches: perplexity protocol, split, window length, BOS,
whole split scored (read from the row's ``eval_<dataset>`` string, which every row records).
What else differs (calibration corpus, quantizer) goes into ``notes``, so a difference is never
reported without saying whether it can be read as one.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from kscale.references.core import TABLES, PublishedTable

COLUMNS = ("family", "size", "method", "bits", "dtype", "ours", "published", "printed", "diff",
           "rel_diff", "protocol_match", "mismatch", "notes", "key")


def parse_eval(text: Any) -> dict[str, str]:
    """``"gptq/v1 split=test seqlen=2048 ... bos=</s>"`` -> ``{protocol: gptq, version: v1, split: test, ...}``."""
    if not isinstance(text, str) or not text:
        return {}
    head, *rest = text.split()
    out: dict[str, str] = {}
    if "/" in head:
        out["protocol"], out["version"] = head.split("/", 1)
    for part in rest:
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


def _none(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v == "None"


def protocol_mismatches(row: Mapping[str, Any], table: PublishedTable) -> list[str]:
    """What differs between the row's recorded evaluation and the table's (empty = matches)."""
    p = table.protocol
    got = parse_eval(row.get(f"eval_{p.dataset}"))
    if not got:
        return [f"no eval_{p.dataset} protocol recorded"]
    out = []
    if got.get("protocol") != p.protocol:
        out.append(f"protocol {got.get('protocol')} != {p.protocol}")
    if got.get("split") != p.split:
        out.append(f"split {got.get('split')} != {p.split}")
    seqlen = str(got.get("seqlen", "")).split("(")[0]
    if seqlen != str(p.seqlen):
        out.append(f"seqlen {seqlen or '?'} != {p.seqlen}")
    want_bos = p.bos.get(str(row.get("family")), "unchecked") if p.bos else "unchecked"
    if want_bos not in ("unchecked", None) and got.get("bos") != want_bos:
        out.append(f"bos {got.get('bos')} != {want_bos}")
    if p.full_split and not (_none(got.get("max_tokens")) and _none(got.get("max_windows"))):
        out.append(f"budget max_tokens={got.get('max_tokens')} max_windows={got.get('max_windows')} "
                   "(the table scores the whole split)")
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as numbers when both are (a DataFrame turns 128 into 128.0), else as strings."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _fmt(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _other_notes(row: Mapping[str, Any], table: PublishedTable) -> list[str]:
    p = table.protocol
    notes = []
    if str(row.get("method")) != "none":
        if not _none(row.get("blocksize")) and row.get("blocksize") != p.blocksize:
            notes.append(f"blocksize {row.get('blocksize')} (table: {'per row' if p.blocksize is None else p.blocksize})")
        notes.append(f"quantizer: kscale {row.get('dtype')}{' centered' if row.get('centered') else ''} vs "
                     f"published {p.quantizer}")
    if row.get("method") == "gptq" and p.calibration:
        diffs = [f"{k[6:]} {_fmt(row.get(k))} != {v}" for k, v in p.calibration.items()
                 if not _same(row.get(k), v)]
        if diffs:
            notes.append("calibration " + ", ".join(diffs))
    return notes


def compare_study(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Every row of ``df`` the published table ``name`` can be matched to (see module doc).

    Rows are matched on (family, size, method, bits); quantized rows must also be at the table's
    granularity (``blocksize``: None = per row). Only ``status == ok`` rows with the metric count.
    Returns a DataFrame with :data:`COLUMNS` (empty when nothing matches), sorted like the table.
    """
    table = TABLES.get(name)
    col = table.column
    if df is None or df.empty or col not in df.columns:
        return pd.DataFrame(columns=list(COLUMNS))
    published = {(v.family, v.size, v.method, int(v.bits)): (i, v) for i, v in enumerate(table.values)}
    out = []
    for _, row in df.iterrows():
        if "status" in row and row["status"] != "ok":
            continue
        ours = pd.to_numeric(row.get(col), errors="coerce")
        if pd.isna(ours):
            continue
        try:
            k = (str(row["family"]), str(row["size"]), str(row["method"]), int(row["bits"]))
        except (KeyError, TypeError, ValueError):
            continue
        if k not in published:
            continue
        order, value = published[k]
        if k[2] != "none" and not (_none(row.get("blocksize")) if table.protocol.blocksize is None
                                   else row.get("blocksize") == table.protocol.blocksize):
            continue
        mismatch = protocol_mismatches(row, table)
        out.append({
            "_order": order, "family": k[0], "size": k[1], "method": k[2], "bits": k[3],
            "dtype": row.get("dtype"), "ours": float(ours), "published": value.value, "printed": value.printed,
            "diff": float(ours) - value.value, "rel_diff": float(ours) / value.value - 1.0,
            "protocol_match": not mismatch, "mismatch": "; ".join(mismatch),
            "notes": "; ".join(_other_notes(row, table)), "key": row.get("key"),
        })
    if not out:
        return pd.DataFrame(columns=list(COLUMNS))
    res = pd.DataFrame(out).sort_values(["_order", "dtype"], na_position="first").drop(columns="_order")
    res.attrs["table"] = table.name
    return res.reset_index(drop=True)[list(COLUMNS)]


def format_comparison(table: pd.DataFrame) -> str:
    """Markdown for ``compare_study``'s result: one line per matched cell, then what differs."""
    name = table.attrs.get("table") if hasattr(table, "attrs") else None
    head = f"Comparison with {TABLES.get(name).title} ({TABLES.get(name).source})\n\n" if name in TABLES else ""
    if table is None or table.empty:
        return head + "_No cell of this study matches the published table._\n"
    lines = ["| model | method | bits | dtype | ours | published | diff | rel. | protocol |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        proto = "match" if r["protocol_match"] else f"differs: {r['mismatch']}"
        dtype = "" if _none(r["dtype"]) else str(r["dtype"])
        lines.append(f"| {r['family']}-{r['size']} | {r['method']} | {r['bits']} | {dtype} | {r['ours']:.4g} | "
                     f"{r['printed']} | {r['diff']:+.3g} | {r['rel_diff']:+.1%} | {proto} |")
    notes = sorted({n for n in table["notes"] if isinstance(n, str) and n})
    text = head + "\n".join(lines) + "\n"
    if notes:
        text += "\nOther differences (not part of the protocol check):\n\n" + "".join(f"- {n}\n" for n in notes)
    n_match = int(table["protocol_match"].sum())
    text += f"\n{n_match} of {len(table)} matched cells were measured under the published protocol.\n"
    return text
