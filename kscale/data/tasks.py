"""Zero-shot task records: parsers for the local files and the equivalent hub datasets.

Each loader returns a tuple of frozen records in file order. Local formats are described in
``../shared/data/README.md``; the hub versions are the ones lm-evaluation-harness uses, with
its preprocessing applied, so both sources give the same records.
"""
from __future__ import annotations

import bz2
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kscale.data.corpus import (
    DataError,
    _choose,
    check_source,
    hub_error,
    hub_unavailable_reason,
    load_hub_rows,
    resolve_local,
)
from kscale.registry import Registry


@dataclass(frozen=True)
class LambadaDoc:
    """A LAMBADA passage; the target is its last space-separated word (lm-eval ``lambada_openai``)."""

    text: str

    @property
    def context(self) -> str:
        return self.text.rsplit(" ", 1)[0]

    @property
    def target(self) -> str:
        return " " + self.text.rsplit(" ", 1)[1]


@dataclass(frozen=True)
class PiqaDoc:
    goal: str
    sol1: str
    sol2: str
    label: int


@dataclass(frozen=True)
class HellaSwagDoc:
    """``query`` is ``activity_label: ctx`` after lm-eval's preprocessing; four endings."""

    query: str
    endings: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class WinoGrandeDoc:
    sentence: str
    option1: str
    option2: str
    answer: int  # 1 or 2


# loader(*, data_dir=None, source="auto", path=None) -> tuple[record, ...]
TASK_DATA: Registry[Callable[..., tuple]] = Registry("zero-shot task data")

#: each task's local file, relative to ``data_dir`` (all four also exist on the hub)
TASK_FILES: dict[str, str] = {
    "lambada": "lambada/lambada_test.jsonl",
    "piqa": "piqa/valid.jsonl",
    "hellaswag": "hellaswag/hellaswag_val_full.txt.bz2",
    "winogrande": "winogrande/dev.jsonl",
}


def _local(name: str, data_dir, path) -> Path:
    return resolve_local(name, data_dir, TASK_FILES[name], path)


def check_task_available(name: str, data_dir: Path | str | None = None, source: str = "auto") -> None:
    """Raise :class:`DataError` unless task ``name``'s records can be loaded: the local file
    exists, or the hub is allowed and reachable. Loads nothing (config-time check)."""
    check_source(source)
    TASK_DATA.get(name)
    local = _local(name, data_dir, None)
    if source != "hub" and local.exists():
        return
    if source == "local":
        raise DataError(f"task {name!r}: local file not found at {local} (source='local'); set data_dir "
                        "(or $KSCALE_DATA_DIR) to the folder holding the shared data")
    why = hub_unavailable_reason()
    if why:
        raise hub_error(f"task {name!r}", local, why)


def _read_lines(file: Path) -> list[str]:
    opener = bz2.open if file.suffix == ".bz2" else open
    with opener(file, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def _jsonl(file: Path) -> list[dict]:
    return [json.loads(line) for line in _read_lines(file) if line.strip()]


def _labels(file: Path, n: int) -> list[int]:
    if not file.exists():
        raise DataError(f"labels file not found at {file}")
    labels = [int(x) for x in _read_lines(file) if x.strip()]
    if len(labels) != n:
        raise DataError(f"{file} has {len(labels)} labels for {n} records; they must match")
    return labels


def _nonempty(name: str, records: list, where: str) -> tuple:
    if not records:
        raise DataError(f"task {name!r} has no records (read from {where})")
    return tuple(records)


@TASK_DATA.register("lambada")
def load_lambada(*, data_dir=None, source: str = "auto", path=None) -> tuple[LambadaDoc, ...]:
    """LAMBADA test, OpenAI's detokenized version: 5153 passages."""
    local = _local("lambada", data_dir, path)
    if _choose("lambada", source, local, hub_ok=True) == "local":
        texts = [rec["text"] for rec in _jsonl(local)]
        where = str(local)
    else:
        texts = load_hub_rows("lambada", "EleutherAI/lambada_openai", "default", "test", "text", local=local,
                              kind="task")
        where = "hub:EleutherAI/lambada_openai"
    return _nonempty("lambada", [LambadaDoc(t) for t in texts], where)


@TASK_DATA.register("piqa")
def load_piqa(*, data_dir=None, source: str = "auto", path=None) -> tuple[PiqaDoc, ...]:
    """PIQA validation: 1838 goals with two solutions and a label file."""
    local = _local("piqa", data_dir, path)
    if _choose("piqa", source, local, hub_ok=True) == "local":
        recs = _jsonl(local)
        labels = _labels(local.with_name(local.name.replace(".jsonl", "-labels.lst")), len(recs))
        docs = [PiqaDoc(r["goal"], r["sol1"], r["sol2"], lab) for r, lab in zip(recs, labels)]
        return _nonempty("piqa", docs, str(local))
    ds = _hub("piqa", local, lambda datasets: datasets.load_dataset("baber/piqa", split="validation"))
    return _nonempty("piqa", [PiqaDoc(r["goal"], r["sol1"], r["sol2"], int(r["label"])) for r in ds], "hub")


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: drop WikiHow ``[title]``-style tags, collapse double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


@TASK_DATA.register("hellaswag")
def load_hellaswag(*, data_dir=None, source: str = "auto", path=None) -> tuple[HellaSwagDoc, ...]:
    """HellaSwag validation: 10042 tasks, 6 lines each in the local file (query, label, 4 endings)."""
    local = _local("hellaswag", data_dir, path)
    if _choose("hellaswag", source, local, hub_ok=True) == "local":
        lines = _read_lines(local)
        if len(lines) % 6:
            raise DataError(f"{local}: expected 6 lines per task, got {len(lines)} lines")
        docs = [
            HellaSwagDoc(lines[i], tuple(lines[i + 2 : i + 6]), int(lines[i + 1]))
            for i in range(0, len(lines), 6)
        ]
        return _nonempty("hellaswag", docs, str(local))
    ds = _hub("hellaswag", local, lambda datasets: datasets.load_dataset("Rowan/hellaswag", split="validation"))
    docs = [
        HellaSwagDoc(
            hellaswag_preprocess(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize()),
            tuple(hellaswag_preprocess(e) for e in r["endings"]),
            int(r["label"]),
        )
        for r in ds
    ]
    return _nonempty("hellaswag", docs, "hub")


@TASK_DATA.register("winogrande")
def load_winogrande(*, data_dir=None, source: str = "auto", path=None) -> tuple[WinoGrandeDoc, ...]:
    """WinoGrande 1.1 dev (``winogrande_xl`` validation): 1267 sentences with a ``_`` blank."""
    local = _local("winogrande", data_dir, path)
    if _choose("winogrande", source, local, hub_ok=True) == "local":
        recs = _jsonl(local)
        where = str(local)
    else:
        recs = list(_hub("winogrande", local, lambda datasets: datasets.load_dataset(
            "allenai/winogrande", "winogrande_xl", split="validation")))
        where = "hub"
    docs = [WinoGrandeDoc(r["sentence"], r["option1"], r["option2"], int(r["answer"])) for r in recs]
    return _nonempty("winogrande", docs, where)


def _hub(name: str, local: Path, fetch: Callable[[Any], Any]) -> Any:
    """``fetch(datasets)``, after a fast check that the hub can answer at all."""
    why = hub_unavailable_reason()
    if why:
        raise hub_error(f"task {name!r}", local, why)
    import datasets  # slow import, only once the hub is known to be usable

    try:
        return fetch(datasets)
    except Exception as exc:
        raise DataError(f"could not load task {name!r} from the hub: {exc}") from exc


def load_task_data(name: str, **kw: Any) -> tuple:
    return TASK_DATA.get(name)(**kw)
