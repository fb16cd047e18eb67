"""Text corpora for perplexity: one registry, loaders that read the hub or local files.

Every loader returns a :class:`TextCorpus` holding the corpus *twice*, because the two
perplexity conventions in the literature read it differently:

* ``rows`` are the rows exactly as the Hugging Face dataset serves them. GPTQ's protocol
  (``IST-DASLab/gptq`` ``datautils.get_wikitext2``) joins them with ``"\\n\\n"`` and tokenizes the
  result once.
* ``documents`` is the document-level split lm-evaluation-harness's ``wikitext`` task scores
  with ``loglikelihood_rolling`` (``EleutherAI/wikitext_document_level``: 62 test articles,
  split at their top-level ``= Title =`` lines).

Sources: ``source="local"`` reads the files under ``data_dir`` (formats in
``../shared/data/README.md``), ``source="hub"`` calls ``datasets.load_dataset``, and
``source="auto"`` uses the local file when it exists and the hub otherwise.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kscale.net import hub_unavailable_reason
from kscale.paths import default_data_dir
from kscale.registry import PluginRegistry, Registry

log = logging.getLogger(__name__)

SOURCES = ("auto", "local", "hub")


class DataError(ValueError):
    """A corpus or task file is missing, empty or malformed, or cannot be fetched."""


@dataclass(frozen=True)
class TextCorpus:
    """A perplexity corpus.

    Attributes:
        name: registry name (``wikitext2``, ``ptb``, ``c4``, ``text``, ``toy``).
        rows: the rows as the Hugging Face dataset serves them (GPTQ's protocol joins
            them with ``"\\n\\n"``).
        documents: document-level split (lm-evaluation-harness's rolling protocol).
        source: where it came from (a path or ``hub:<name>``), for logs and errors.
    """

    name: str
    rows: tuple[str, ...]
    documents: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "documents", tuple(self.documents))
        if not any(r.strip() for r in self.rows) or not any(d.strip() for d in self.documents):
            raise DataError(
                f"corpus {self.name!r} is empty (rows and documents must contain non-blank text); "
                f"read from {self.source or 'an unknown source'}"
            )

    def joined(self, sep: str = "\n\n") -> str:
        """The text GPTQ tokenizes: the rows joined with ``sep``."""
        return sep.join(self.rows)


# loader(*, data_dir, split="test", source="auto", path=None, **options) -> TextCorpus
CORPORA: PluginRegistry[Callable[..., TextCorpus]] = PluginRegistry("corpus")


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"data source must be one of {', '.join(SOURCES)}; got {source!r}")
    return source


def hub_error(what: str, local: Path | str | None, why: str) -> DataError:
    where = f"not on disk (looked for {local})" if local is not None else "has no local copy"
    return DataError(
        f"{what} is {where} and {why}. Put the file there (set data_dir or $KSCALE_DATA_DIR to the "
        "folder holding the shared data), pass path=, or go online."
    )


def load_hub_rows(name: str, path: str, config: str | None, split: str, field: str, *,
                  local: Path | str | None = None, kind: str = "corpus", **kw: Any) -> list[str]:
    """``datasets.load_dataset(path, config, split=split)[field]``, failing fast (with the local
    path that was looked for) when the hub is disabled or unreachable."""
    why = hub_unavailable_reason()
    if why:
        raise hub_error(f"{kind} {name!r} (hub dataset {path!r}, {config}, split {split!r})", local, why)
    import datasets  # local import: slow, and only needed online

    try:
        ds = datasets.load_dataset(path, config, split=split, **kw)
    except Exception as exc:  # network, missing config: re-raise with what was looked for
        raise DataError(
            f"could not load {kind} {name!r} from the hub ({path!r}, {config!r}, split {split!r}): {exc}"
        ) from exc
    return list(ds[field])


def resolve_local(name: str, data_dir: Path | str | None, relative: str, path: str | os.PathLike | None) -> Path:
    """The local file for ``name``: an explicit ``path`` or ``data_dir/relative``."""
    candidate = Path(path).expanduser() if path else Path(data_dir or default_data_dir()) / relative
    return candidate


@dataclass(frozen=True)
class CorpusFiles:
    """Where a corpus lives, for loaders and for :func:`check_available` (which must not load it).

    Attributes:
        local: ``split -> path`` relative to ``data_dir`` (None: no local copy in the shared data).
        hub: whether a Hugging Face hub version exists.
        needs_path: the corpus is a user file (``text``): ``path=`` is required.
    """

    local: Callable[[str], str] | None
    hub: bool
    needs_path: bool = False


#: corpora read from files; a corpus registered in :data:`CORPORA` but not here is generated (``toy``)
CORPUS_FILES: Registry[CorpusFiles] = Registry("corpus files")
CORPUS_FILES.register("wikitext2", CorpusFiles(lambda split: f"wikitext-2-raw/wiki.{split}.raw", hub=True))
CORPUS_FILES.register("ptb", CorpusFiles(
    lambda split: f"ptb/ptb.{ {'validation': 'valid'}.get(split, split)}.txt", hub=True))
CORPUS_FILES.register("c4", CorpusFiles(lambda split: "c4/c4-validation.00000-of-00008.json.gz", hub=True))
CORPUS_FILES.register("text", CorpusFiles(None, hub=False, needs_path=True))


def check_available(name: str, data_dir: Path | str | None = None, source: str = "auto", *,
                    split: str = "test", path: str | os.PathLike | None = None) -> None:
    """Raise :class:`DataError` (a ``ValueError``) unless corpus ``name`` can be loaded with these
    settings. Reads nothing but file metadata (and, only when the local file is missing and the
    hub would be needed, makes one 3 s reachability probe), so it suits config-time validation."""
    check_source(source)
    CORPORA.get(name)  # unknown -> did-you-mean error
    if name not in CORPUS_FILES:
        return  # generated, not read (toy)
    files = CORPUS_FILES.get(name)
    if path is not None:
        if not Path(path).expanduser().exists():
            raise DataError(f"corpus {name!r}: file not found at {Path(path).expanduser()} (path=)")
        return
    if files.needs_path:
        raise DataError(f"corpus {name!r} needs path= (a local UTF-8 text or .jsonl file); got path=None")
    local = resolve_local(name, data_dir, files.local(split), None) if files.local else None
    if source != "hub" and local is not None and local.exists():
        return
    if source == "local":
        raise DataError(f"corpus {name!r}: local file not found at {local} (source='local'); set data_dir "
                        "(or $KSCALE_DATA_DIR) to the folder holding the shared data, or pass path=")
    if not files.hub:
        raise DataError(f"corpus {name!r} has no hub version and no local file at {local}")
    why = hub_unavailable_reason()
    if why:
        raise hub_error(f"corpus {name!r}", local, why)


def _local_of(name: str, data_dir, split: str, path) -> Path:
    return resolve_local(name, data_dir, CORPUS_FILES.get(name).local(split), path)


def _choose(name: str, source: str, local: Path, hub_ok: bool) -> str:
    """Pick local or hub for ``source`` ('auto' prefers the local file)."""
    check_source(source)
    if source == "local" or (source == "auto" and local.exists()):
        if not local.exists():
            raise DataError(
                f"corpus {name!r}: local file not found at {local} (source='local'); "
                "set data_dir (or $KSCALE_DATA_DIR) to the folder holding the shared data, or pass path="
            )
        return "local"
    if not hub_ok:
        raise DataError(f"corpus {name!r} has no hub version and no local file at {local}")
    return "hub"


# ------------------------------------------------------------------ WikiText-2

def wikitext_rows_from_raw(text: str) -> list[str]:
    """Hub rows of ``wikitext-2-raw-v1`` from the raw file: ``line + "\\n"`` if it has content, else ``""``.

    The raw file's blank lines are a single space; the hub serves them as empty strings.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]  # the file ends with a newline: no row after it
    return [line + "\n" if line.strip() else "" for line in lines]


def wikitext_documents_from_raw(text: str) -> list[str]:
    """The 62 test articles of ``EleutherAI/wikitext_document_level``.

    A new article starts at a top-level title line (`` = Title = ``; section headings are
    ``= = ... = =``); the page text is the lines joined with ``"\\n"``, as the hub builder does.
    """
    docs: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        probe = line.replace("= = =", "===").replace("= =", "==").strip()
        if probe.startswith("= ") and probe.endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                docs.append(page)
            current = []
        current.append(line)
    page = "\n".join(current)
    if page.strip():
        docs.append(page)
    return docs


def rows_to_documents(rows: Sequence[str]) -> list[str]:
    """Documents for hub-served WikiText rows (same split as :func:`wikitext_documents_from_raw`)."""
    raw = "".join(r if r else " \n" for r in rows)
    return wikitext_documents_from_raw(raw)


@CORPORA.register("wikitext2")
def load_wikitext2(*, data_dir=None, split: str = "test", source: str = "auto", path=None, **_: Any) -> TextCorpus:
    """WikiText-2 raw (``wikitext-2-raw-v1``). Locally only the test split exists."""
    local = _local_of("wikitext2", data_dir, split, path)
    if _choose("wikitext2", source, local, hub_ok=True) == "local":
        text = local.read_text(encoding="utf-8")
        return TextCorpus("wikitext2", tuple(wikitext_rows_from_raw(text)),
                          tuple(wikitext_documents_from_raw(text)), str(local))
    rows = load_hub_rows("wikitext2", "wikitext", "wikitext-2-raw-v1", split, "text", local=local)
    return TextCorpus("wikitext2", tuple(rows), tuple(rows_to_documents(rows)), "hub:wikitext-2-raw-v1")


# ------------------------------------------------------------------ PTB

@CORPORA.register("ptb")
def load_ptb(*, data_dir=None, split: str = "test", source: str = "auto", path=None, **_: Any) -> TextCorpus:
    """Penn Treebank (Mikolov's preprocessed text; hub ``ptb_text_only`` field ``sentence``).

    The hub serves each line stripped of its leading space and newline; the local file keeps
    them (`` no it was n't ...  \\n``). Rows here match the hub: ``line.strip()``. The rolling
    protocol treats the whole split as one document.
    """
    local = _local_of("ptb", data_dir, split, path)
    if _choose("ptb", source, local, hub_ok=True) == "local":
        rows = [line.strip() for line in local.read_text(encoding="utf-8").splitlines()]
        src = str(local)
    else:
        rows = load_hub_rows("ptb", "ptb_text_only", "penn_treebank", split, "sentence", local=local)
        src = "hub:ptb_text_only"
    return TextCorpus("ptb", tuple(rows), ("\n".join(rows),), src)


# ------------------------------------------------------------------ C4 (hub only)

@CORPORA.register("c4")
def load_c4(*, data_dir=None, split: str = "validation", source: str = "auto", path=None,
            n_documents: int = 1100, **_: Any) -> TextCorpus:
    """C4 validation, GPTQ's "new eval" slice: the first ``n_documents`` documents of
    ``en/c4-validation.00000-of-00008.json.gz`` (``datautils.get_c4_new``), read from
    ``data_dir/c4/`` when that file is there (not part of the shared data), else from the hub;
    ``path`` may point at any local text/JSONL file instead."""
    if path is not None:
        return load_text(data_dir=data_dir, source="local", path=path, name="c4")
    local = _local_of("c4", data_dir, "validation", None)
    if _choose("c4", source, local, hub_ok=True) == "local":
        rows = []
        with gzip.open(local, "rt", encoding="utf-8") as fh:
            for line in fh:
                if len(rows) >= n_documents:
                    break
                if line.strip():
                    rows.append(json.loads(line)["text"])
        src = str(local)
    else:
        rows = load_hub_rows(
            "c4", "allenai/c4", None, "validation", "text", local=local,
            data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
        )[:n_documents]
        src = "hub:allenai/c4"
    # GPTQ joins C4 documents with a space; keep them as separate documents for rolling.
    return TextCorpus("c4", tuple(rows), tuple(rows), src)


# ------------------------------------------------------------------ any local text file

@CORPORA.register("text")
def load_text(*, data_dir=None, split: str = "test", source: str = "local", path=None,
              name: str = "text", **_: Any) -> TextCorpus:
    """Any local UTF-8 text file: rows are its lines; documents are blank-line separated blocks
    (JSONL files with a ``text`` field give one row/document per record)."""
    if path is None:
        raise DataError("corpus 'text' needs path= (a local UTF-8 text or .jsonl file); got path=None")
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"corpus {name!r}: file not found at {file}")
    if file.suffix == ".jsonl":
        rows = [json.loads(line)["text"] for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        return TextCorpus(name, tuple(rows), tuple(rows), str(file))
    text = file.read_text(encoding="utf-8")
    rows = text.splitlines()
    docs = [block for block in text.split("\n\n") if block.strip()]
    return TextCorpus(name, tuple(rows), tuple(docs), str(file))


def load_corpus(name: str, **kw: Any) -> TextCorpus:
    """``CORPORA.get(name)(**kw)``; unknown names raise with a did-you-mean suggestion."""
    return CORPORA.get(name)(**kw)
