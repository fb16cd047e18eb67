"""Published numbers as data, with their sources: tables to compare against, claims to check.

    TABLES     GPTQ Table 3 (``gptq-opt-wikitext2``) and Table 4 (``gptq-bloom-wikitext2``)
    FINDINGS   the k-bit paper's headline findings as checks on a results table
    FORMATS    llama.cpp's Q4_0 / Q8_0 / Q4_K bits per weight, as ledger checks
    compare_study(df, name) -> DataFrame; format_comparison(table) -> markdown

Values come only from ``/work/shared/REFERENCES.md`` (or, for the storage formats, from
arithmetic on the published block layouts); nothing here is measured.
"""
from __future__ import annotations

from kscale.references import dettmers, formats, gptq  # noqa: F401 - register the data
from kscale.references.compare import compare_study, format_comparison, parse_eval, protocol_mismatches
from kscale.references.core import (
    FINDINGS,
    FORMATS,
    TABLES,
    Finding,
    FindingResult,
    PublishedProtocol,
    PublishedTable,
    PublishedValue,
    StorageFormat,
)
from kscale.references.dettmers import check_findings
from kscale.references.formats import ledger_check

__all__ = [
    "FINDINGS", "FORMATS", "TABLES", "Finding", "FindingResult", "PublishedProtocol", "PublishedTable",
    "PublishedValue", "StorageFormat", "check_findings", "compare_study", "format_comparison",
    "ledger_check", "parse_eval", "protocol_mismatches",
]
