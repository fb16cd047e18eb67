"""Word-level tokenizers for the toy family, saved as ordinary Hugging Face tokenizers.

The checkpoint directory must load with ``AutoTokenizer.from_pretrained(dir)`` exactly like a
hub model, so the tokenizer is a ``PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel
model: one id per word of the language, split on whitespace (so the ``"\\n\\n"`` that GPTQ's
protocol puts between rows disappears and the token stream is exactly the language's tokens).

**No BOS/EOS is added** when encoding (there is no post-processor): the tokens an evaluator
scores are the language's own tokens, so a model's mean NLL is directly comparable with the
entropy rate in nats/token. Two special tokens follow the words: ``<unk>`` (needed for text
files and never produced by the synthetic language) and ``<eos>`` (the config's eos/pad id).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

UNK = "<unk>"
EOS = "<eos>"
SPECIAL_TOKENS = (UNK, EOS)


def build_tokenizer(words: Sequence[str]):
    """A ``PreTrainedTokenizerFast`` with ids ``0..len(words)-1`` = ``words``, then ``<unk>``, ``<eos>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    if len(vocab) != len(words):
        raise ValueError(f"words must be distinct; got {len(words) - len(vocab)} duplicates")
    for special in SPECIAL_TOKENS:
        if special in vocab:
            raise ValueError(f"{special!r} is reserved for the special tokens {SPECIAL_TOKENS}")
        vocab[special] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=1_000_000_000,  # no truncation warnings: protocols cut windows themselves
    )


def text_vocabulary(text: str, max_vocab: int) -> list[str]:
    """The ``max_vocab`` most frequent whitespace-separated words of ``text`` (ties: first seen).

    Rarer words map to ``<unk>``; the text path is a demo, not a benchmark, so a simple
    word-level vocabulary is enough.
    """
    if max_vocab < 1:
        raise ValueError(f"max_vocab must be >= 1; got {max_vocab}")
    counts = Counter(text.split())
    for special in SPECIAL_TOKENS:
        counts.pop(special, None)
    return [w for w, _ in counts.most_common(max_vocab)]
