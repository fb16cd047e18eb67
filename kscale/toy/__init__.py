"""The ``toy`` family: a ladder of small causal LMs that kscale trains itself on a synthetic
language whose entropy rate is known exactly (issue 6).

Importing this package registers

* ``FAMILIES["toy"]`` — sizes of :data:`LADDER`, :data:`BEYOND_LADDER`, :data:`QUICK_RUNGS`, provider ``toy``, ``seqlen`` = training context;
* ``PROVIDERS["toy"]`` — :class:`ToyProvider` (``locate`` / ``ensure``: train-once cache);
* ``CORPORA["toy"]`` — :func:`load_toy_corpus`, held-out text of the same language.

Command line: ``python -m kscale.toy train [--sizes ...]`` and ``python -m kscale.toy entropy``.
"""
from __future__ import annotations

from kscale.data.corpus import CORPORA
from kscale.models.family import FAMILIES, PROVIDERS, ModelFamily
from kscale.quant.filter import ModuleFilter
from kscale.toy.language import LanguageSpec, MarkovLanguage
from kscale.toy.ladder import (
    BEYOND_LADDER,
    LADDER,
    QUICK_RUNGS,
    SIZES,
    ToyOptions,
    ToyProvider,
    data_source,
    entropy_rate,
    load_toy_corpus,
    train_checkpoint,
)
from kscale.toy.tokenizer import build_tokenizer
from kscale.toy.train import ARCHITECTURES, ToyShape, TrainSpec, build_model, n_params, train_model

__all__ = [
    "ARCHITECTURES", "BEYOND_LADDER", "LADDER", "QUICK_RUNGS", "SIZES", "LanguageSpec", "MarkovLanguage",
    "PROVIDER", "ToyOptions", "ToyProvider", "ToyShape", "TrainSpec", "build_model", "build_tokenizer", "data_source", "entropy_rate",
    "load_toy_corpus", "n_params", "train_checkpoint", "train_model",
]

#: Outlier proxy pairs (Dettmers & Zettlemoyer 2022, §3: attention-output std marks FFN1 input
#: columns) for the default ``gpt2`` architecture. A family has one table, and pairs that match
#: no module are logged as warnings on every quantization, so the ``opt``/``llama`` variants
#: (``*.self_attn.out_proj -> *.fc1``, ``*.self_attn.o_proj -> *.mlp.up_proj``) are not listed.
OUTLIER_PAIRS = (("transformer.h.*.attn.c_proj", "transformer.h.*.mlp.c_fc"),)

PROVIDER = ToyProvider()

if "toy" not in FAMILIES:  # importlib test mode may import the package twice
    FAMILIES.register(
        "toy",
        ModelFamily(
            name="toy",
            default_eval="toy",
            sizes={label: f"toy/{label}" for label in SIZES},
            module_filter=ModuleFilter(),  # every block linear; embeddings and tied lm_head stay 16-bit
            seqlen=TrainSpec().seqlen,
            outlier_pairs=OUTLIER_PAIRS,
            provider="toy",
            description="kscale-trained ladder on a synthetic order-2 Markov language (exact entropy rate)",
        ),
    )
if "toy" not in PROVIDERS:
    PROVIDERS.register("toy", PROVIDER)
if "toy" not in CORPORA:
    CORPORA.register("toy", load_toy_corpus)
