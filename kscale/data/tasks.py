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

from kscale.data.corpus import DataError, _choose, load_hub_rows, resolve_local
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
    local = resolve_local("lambada", data_dir, "lambada/lambada_test.jsonl", path)
    if _choose("lambada", source, local, hub_ok=True) == "local":
        texts = [rec["text"] for rec in _jsonl(local)]
        where = str(local)
    else:
        texts = load_hub_rows("lambada", "EleutherAI/lambada_openai", "default", "test", "text")
        where = "hub:EleutherAI/lambada_openai"
    return _nonempty("lambada", [LambadaDoc(t) for t in texts], where)


@TASK_DATA.register("piqa")
def load_piqa(*, data_dir=None, source: str = "auto", path=None) -> tuple[PiqaDoc, ...]:
    """PIQA validation: 1838 goals with two solutions and a label file."""
    local = resolve_local("piqa", data_dir, "piqa/valid.jsonl", path)
    if _choose("piqa", source, local, hub_ok=True) == "local":
        recs = _jsonl(local)
        labels = _labels(local.with_name(local.name.replace(".jsonl", "-labels.lst")), len(recs))
        docs = [PiqaDoc(r["goal"], r["sol1"], r["sol2"], lab) for r, lab in zip(recs, labels)]
        return _nonempty("piqa", docs, str(local))
    import datasets

    ds = _hub("piqa", lambda: datasets.load_dataset("baber/piqa", split="validation"))
    return _nonempty("piqa", [PiqaDoc(r["goal"], r["sol1"], r["sol2"], int(r["label"])) for r in ds], "hub")


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: drop WikiHow ``[title]``-style tags, collapse double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


@TASK_DATA.register("hellaswag")
def load_hellaswag(*, data_dir=None, source: str = "auto", path=None) -> tuple[HellaSwagDoc, ...]:
    """HellaSwag validation: 10042 tasks, 6 lines each in the local file (query, label, 4 endings)."""
    local = resolve_local("hellaswag", data_dir, "hellaswag/hellaswag_val_full.txt.bz2", path)
    if _choose("hellaswag", source, local, hub_ok=True) == "local":
        lines = _read_lines(local)
        if len(lines) % 6:
            raise DataError(f"{local}: expected 6 lines per task, got {len(lines)} lines")
        docs = [
            HellaSwagDoc(lines[i], tuple(lines[i + 2 : i + 6]), int(lines[i + 1]))
            for i in range(0, len(lines), 6)
        ]
        return _nonempty("hellaswag", docs, str(local))
    import datasets

    ds = _hub("hellaswag", lambda: datasets.load_dataset("Rowan/hellaswag", split="validation"))
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
    local = resolve_local("winogrande", data_dir, "winogrande/dev.jsonl", path)
    if _choose("winogrande", source, local, hub_ok=True) == "local":
        recs = _jsonl(local)
        where = str(local)
    else:
        import datasets

        recs = list(_hub("winogrande", lambda: datasets.load_dataset(
            "allenai/winogrande", "winogrande_xl", split="validation")))
        where = "hub"
    docs = [WinoGrandeDoc(r["sentence"], r["option1"], r["option2"], int(r["answer"])) for r in recs]
    return _nonempty("winogrande", docs, where)


def _hub(name: str, fetch: Callable[[], Any]) -> Any:
    from kscale.data.corpus import hub_offline

    if hub_offline():
        raise DataError(f"task {name!r} needs the Hugging Face hub, but the hub is disabled (HF_HUB_OFFLINE); "
                        "use source='local' with data_dir pointing at the shared data")
    try:
        return fetch()
    except Exception as exc:
        raise DataError(f"could not load task {name!r} from the hub: {exc}") from exc


def load_task_data(name: str, **kw: Any) -> tuple:
    return TASK_DATA.get(name)(**kw)
