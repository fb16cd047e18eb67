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

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kscale.registry import Registry

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
CORPORA: Registry[Callable[..., TextCorpus]] = Registry("corpus")


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"data source must be one of {', '.join(SOURCES)}; got {source!r}")
    return source


def hub_offline() -> bool:
    """True when the environment forbids hub access (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``)."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def load_hub_rows(name: str, path: str, config: str | None, split: str, field: str, **kw: Any) -> list[str]:
    """``datasets.load_dataset(path, config, split=split)[field]`` with a clear offline error."""
    if hub_offline():
        raise DataError(
            f"corpus {name!r} needs the Hugging Face hub dataset {path!r} ({config}, split {split!r}), "
            "but the hub is disabled (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set). "
            "Use source='local' with a data_dir that holds the files, or go online."
        )
    import datasets  # local import: slow, and only needed online

    try:
        ds = datasets.load_dataset(path, config, split=split, **kw)
    except Exception as exc:  # network, missing config: re-raise with what was looked for
        raise DataError(
            f"could not load corpus {name!r} from the hub ({path!r}, {config!r}, split {split!r}): {exc}"
        ) from exc
    return list(ds[field])


def resolve_local(name: str, data_dir: Path | str | None, relative: str, path: str | os.PathLike | None) -> Path:
    """The local file for ``name``: an explicit ``path`` or ``data_dir/relative``."""
    from kscale.paths import default_data_dir

    candidate = Path(path).expanduser() if path else Path(data_dir or default_data_dir()) / relative
    return candidate


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
    local = resolve_local("wikitext2", data_dir, f"wikitext-2-raw/wiki.{split}.raw", path)
    if _choose("wikitext2", source, local, hub_ok=True) == "local":
        text = local.read_text(encoding="utf-8")
        return TextCorpus("wikitext2", tuple(wikitext_rows_from_raw(text)),
                          tuple(wikitext_documents_from_raw(text)), str(local))
    rows = load_hub_rows("wikitext2", "wikitext", "wikitext-2-raw-v1", split, "text")
    return TextCorpus("wikitext2", tuple(rows), tuple(rows_to_documents(rows)), "hub:wikitext-2-raw-v1")


# ------------------------------------------------------------------ PTB

@CORPORA.register("ptb")
def load_ptb(*, data_dir=None, split: str = "test", source: str = "auto", path=None, **_: Any) -> TextCorpus:
    """Penn Treebank (Mikolov's preprocessed text; hub ``ptb_text_only`` field ``sentence``).

    The hub serves each line stripped of its leading space and newline; the local file keeps
    them (`` no it was n't ...  \\n``). Rows here match the hub: ``line.strip()``. The rolling
    protocol treats the whole split as one document.
    """
    split_name = {"validation": "valid"}.get(split, split)
    local = resolve_local("ptb", data_dir, f"ptb/ptb.{split_name}.txt", path)
    if _choose("ptb", source, local, hub_ok=True) == "local":
        rows = [line.strip() for line in local.read_text(encoding="utf-8").splitlines()]
        src = str(local)
    else:
        rows = load_hub_rows("ptb", "ptb_text_only", "penn_treebank", split, "sentence")
        src = "hub:ptb_text_only"
    return TextCorpus("ptb", tuple(rows), ("\n".join(rows),), src)


# ------------------------------------------------------------------ C4 (hub only)

@CORPORA.register("c4")
def load_c4(*, data_dir=None, split: str = "validation", source: str = "auto", path=None,
            n_documents: int = 1100, **_: Any) -> TextCorpus:
    """C4 validation, GPTQ's "new eval" slice: the first ``n_documents`` documents of
    ``en/c4-validation.00000-of-00008.json.gz`` (``datautils.get_c4_new``). Hub only unless
    ``path`` points at a local text/JSONL file."""
    if path is not None:
        return load_text(data_dir=data_dir, source="local", path=path, name="c4")
    if source == "local":
        raise DataError("corpus 'c4' has no local copy in the shared data; use source='hub' or pass path=")
    rows = load_hub_rows(
        "c4", "allenai/c4", None, "validation", "text",
        data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
    )[:n_documents]
    # GPTQ joins C4 documents with a space; keep them as separate documents for rolling.
    return TextCorpus("c4", tuple(rows), tuple(rows), "hub:allenai/c4")


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
        import json

        rows = [json.loads(line)["text"] for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        return TextCorpus(name, tuple(rows), tuple(rows), str(file))
    text = file.read_text(encoding="utf-8")
    rows = text.splitlines()
    docs = [block for block in text.split("\n\n") if block.strip()]
    return TextCorpus(name, tuple(rows), tuple(docs), str(file))


def _ensure_plugins(name: str) -> None:
    """Import optional packages that register corpora (``kscale.toy``) when ``name`` is missing."""
    if name in CORPORA:
        return
    try:
        import kscale.toy  # noqa: F401  (registers the "toy" corpus)
    except ImportError as exc:
        if exc.name not in ("kscale.toy",):
            raise


def load_corpus(name: str, **kw: Any) -> TextCorpus:
    """``CORPORA.get(name)(**kw)``; unknown names raise with a did-you-mean suggestion."""
    _ensure_plugins(name)
    return CORPORA.get(name)(**kw)
