"""Text corpora for perplexity: one registry, loaders that read the hub or local files."""
from __future__ import annotations

from dataclasses import dataclass

from kscale.registry import Registry


@dataclass(frozen=True)
class TextCorpus:
    """A perplexity corpus.

    Attributes:
        name: registry name (``wikitext2``, ``ptb``, ``c4``, ``text``, ``toy``).
        rows: the rows as the Hugging Face dataset serves them (GPTQ's protocol joins
            them with ``"\\n\\n"``).
        documents: document-level split (lm-evaluation-harness's rolling protocol).
    """

    name: str
    rows: tuple[str, ...]
    documents: tuple[str, ...]


# loader(*, data_dir, split="test", source="auto", path=None, **options) -> TextCorpus
CORPORA: Registry = Registry("corpus")
