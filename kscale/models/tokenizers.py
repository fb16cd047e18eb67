"""Build the study's tokenizers from local files (no hub): GPT-2, GPT-NeoX-20B and OPT.

OPT has no tokenizer file of its own in the shared data: it uses GPT-2's byte-level BPE with
token ids remapped through fairseq's ``dict.txt`` (``<s>``=0, ``<pad>``=1, ``</s>``=2,
``<unk>``=3, then line ``i`` of ``dict.txt`` -> id ``i + 4``; each line names a GPT-2 id), and
its Hugging Face tokenizer prepends ``</s>`` as BOS. :func:`opt_tokenizer` rebuilds exactly
that, so tests and offline users get OPT's ids (``"Hello"`` -> 31414) without a download.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from kscale.paths import default_data_dir

# len(AutoTokenizer.from_pretrained("facebook/opt-125m")): 4 specials + 50257 BPE tokens + 4
# fillers. (The model's embedding has 50272 rows, padded to a multiple of 8.)
OPT_VOCAB_LEN = 50265


def _tok_dir(data_dir: Path | str | None, name: str) -> Path:
    path = Path(data_dir or default_data_dir()) / "tokenizers" / name
    if not path.exists():
        raise FileNotFoundError(f"tokenizer files not found: looked for {path}")
    return path


def gpt2_tokenizer(data_dir: Path | str | None = None):
    """GPT-2's BPE (``"Hello world"`` -> ``[15496, 995]``), as a fast tokenizer."""
    return AutoTokenizer.from_pretrained(str(_tok_dir(data_dir, "gpt2")))


def neox_tokenizer(data_dir: Path | str | None = None):
    """GPT-NeoX-20B's tokenizer, used by Pythia (``"Hello world"`` -> ``[12092, 1533]``)."""
    file = _tok_dir(data_dir, "gpt-neox-20b") / "tokenizer.json"
    return PreTrainedTokenizerFast(
        tokenizer_file=str(file), bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|padding|>",
    )


def opt_tokenizer(data_dir: Path | str | None = None):
    """OPT's tokenizer rebuilt from OpenAI's ``encoder.json``/``vocab.bpe`` and fairseq's ``dict.txt``.

    Returns a ``PreTrainedTokenizerFast`` whose post-processor prepends ``</s>`` (id 2), as
    ``facebook/opt-*`` tokenizers do (``add_bos_token=True``, ``bos_token="</s>"``).
    """
    folder = _tok_dir(data_dir, "fairseq-gpt2-bpe")
    encoder: dict[str, int] = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    by_gpt2_id = {i: tok for tok, i in encoder.items()}
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for line_no, line in enumerate((folder / "dict.txt").read_text(encoding="utf-8").splitlines()):
        symbol = line.rsplit(" ", 1)[0]
        new_id = line_no + 4
        if symbol.isdigit() and int(symbol) in by_gpt2_id:
            vocab[by_gpt2_id[int(symbol)]] = new_id
        elif new_id < OPT_VOCAB_LEN:  # fairseq's madeupwordNNNN fillers: OPT keeps the first four
            vocab[symbol] = new_id
    merges = []
    for line in (folder / "vocab.bpe").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#version"):
            a, b = line.split(" ")
            merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=2048,
    )
    return fast
