"""Evaluation data: perplexity corpora and zero-shot task records, from the hub or local files."""
from __future__ import annotations

from kscale.data.corpus import CORPORA, SOURCES, DataError, TextCorpus, load_corpus
from kscale.data.tasks import (
    TASK_DATA,
    HellaSwagDoc,
    LambadaDoc,
    PiqaDoc,
    WinoGrandeDoc,
    load_task_data,
)

__all__ = [
    "CORPORA", "SOURCES", "DataError", "TextCorpus", "load_corpus",
    "TASK_DATA", "HellaSwagDoc", "LambadaDoc", "PiqaDoc", "WinoGrandeDoc", "load_task_data",
]
