"""Evaluation data: perplexity corpora and zero-shot task records, from the hub or local files."""
from __future__ import annotations

from kscale.data.corpus import CORPORA, CORPUS_FILES, SOURCES, DataError, TextCorpus, check_available, load_corpus
from kscale.data.tasks import (
    TASK_DATA,
    TASK_FILES,
    HellaSwagDoc,
    LambadaDoc,
    PiqaDoc,
    WinoGrandeDoc,
    check_task_available,
    load_task_data,
)

__all__ = [
    "CORPORA", "CORPUS_FILES", "SOURCES", "DataError", "TextCorpus", "check_available", "load_corpus",
    "TASK_DATA", "TASK_FILES", "HellaSwagDoc", "LambadaDoc", "PiqaDoc", "WinoGrandeDoc", "check_task_available",
    "load_task_data",
]
