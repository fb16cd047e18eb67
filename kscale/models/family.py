"""A model family is data: a name, a size table, which linears to quantize, a sequence length.

The size table maps the labels users type (``125m``) to hub ids (``facebook/opt-125m``),
ordered from smallest to largest. Families whose checkpoints kscale builds itself (the
``toy`` ladder) name a checkpoint *provider* instead of relying on the hub.

The built-in families are the ones Dettmers & Zettlemoyer (2022) study (OPT, Pythia, GPT-2,
BLOOM; §4 "Experimental setup") plus a generic ``llama`` family for any
``AutoModelForCausalLM`` checkpoint. Their module filters quantize the linear layers inside
the transformer blocks only: embeddings, the LM head and OPT-350m's ``project_in/out`` stay in
16 bit, as in the paper's setup (which quantizes "all linear layers" of the blocks) and in
GPTQ's ``find_layers`` over ``model.decoder.layers``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from kscale.quant.filter import ModuleFilter
from kscale.registry import PLUGIN_MODULES, PluginRegistry, Registry, import_plugins  # noqa: F401 (re-exported)

#: Revision names of the form ``step<N>`` (Pythia's hub branches): N optimizer steps.
STEP_REVISION = re.compile(r"step(\d+)")


@dataclass(frozen=True)
class ModelFamily:
    """One family of causal LMs at several sizes.

    Attributes:
        name: config/registry name (``opt``, ``pythia``, ``toy``).
        sizes: size label -> hub id (or provider-specific id), smallest first.
        module_filter: which ``nn.Linear``/``Conv1D`` modules are quantized.
        seqlen: default evaluation sequence length (the model's context in GPTQ's protocol).
        outlier_pairs: (producer glob, consumer glob) pairs for proxy quantization: the output
            units of the producer whose weights have the largest std mark the *input* columns of
            the consumer that stay in 16 bit (Dettmers & Zettlemoyer 2022, §3). The ``*`` in a
            pair stands for the same block index in both globs (pairs are within one block).
        provider: name in :data:`PROVIDERS` that materialises local checkpoints, or None (hub).
        open_sizes: the size table lists examples only; any label is accepted when the user
            gives its checkpoint (``checkpoints=``, ``local_paths=`` or ``local_dir``), as for
            the generic ``llama`` family.
        tokens_per_step: training tokens per optimizer step, when every size shares one batch
            (Pythia: 1024 sequences x 2048 tokens = 2,097,152). A revision ``step<N>`` was trained
            on ``N * tokens_per_step`` tokens; None = the family publishes no such rule.
        final_revision: the revision the default (hub ``main``) checkpoint is (``step143000``),
            so the default row gets its token count too.
        revisions: the revisions the family publishes, if known; others are rejected up front
            (before a hub call) unless their token count is given explicitly.
        default_eval: the eval (``conf/eval/<name>.yaml``) the family is scored with unless
            another is asked for; its YAML's defaults list names the same (a test checks).
    """

    name: str
    sizes: Mapping[str, str]
    module_filter: ModuleFilter = field(default_factory=ModuleFilter)
    seqlen: int = 2048
    outlier_pairs: tuple[tuple[str, str], ...] = ()
    provider: str | None = None
    description: str = ""
    open_sizes: bool = False
    tokens_per_step: int | None = None
    final_revision: str | None = None
    revisions: tuple[str, ...] = ()
    default_eval: str = "wikitext2"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", MappingProxyType(dict(self.sizes)))
        object.__setattr__(self, "revisions", tuple(self.revisions))
        object.__setattr__(self, "outlier_pairs", tuple(tuple(p) for p in self.outlier_pairs))
        if not isinstance(self.seqlen, int) or self.seqlen < 2:
            raise ValueError(f"family {self.name!r}: seqlen must be an int >= 2; got {self.seqlen!r}")
        for pair in self.outlier_pairs:
            if len(pair) != 2:
                raise ValueError(f"family {self.name!r}: outlier_pairs entries are (producer, consumer); got {pair!r}")

    def size_labels(self) -> list[str]:
        return list(self.sizes)

    def revision_tokens(self, revision: str | None) -> int | None:
        """Training tokens of ``revision`` (None = the default checkpoint) by the family's step
        rule: ``step<N>`` -> ``N * tokens_per_step``; None when the family has no rule or the
        name is not a step."""
        revision = self.final_revision if revision is None else revision
        match = STEP_REVISION.fullmatch(revision or "")
        if self.tokens_per_step is None or match is None:
            return None
        return int(match.group(1)) * self.tokens_per_step


class CheckpointProvider(Protocol):
    """Builds checkpoints that are not on the hub (e.g. trains the toy ladder).

    Checkpoints over training (optional): ``revisions(options)`` names them, ``locate`` and
    ``ensure`` take them, ``n_tokens`` reports a built checkpoint's training tokens.
    """

    def locate(self, size: str, options: Mapping[str, Any], revision: str | None = None) -> Path:
        """Where the checkpoint of ``size`` (at ``revision``; None = final) is or will be; does no work."""

    def ensure(self, sizes: Sequence[str], options: Mapping[str, Any],
               revisions: Sequence[str | None] | None = None) -> dict[str, Path]:
        """Build whatever is missing (``revisions`` of every size too) and return ``size -> final dir``."""


FAMILIES: Registry[ModelFamily] = PluginRegistry("model family")
PROVIDERS: Registry[CheckpointProvider] = PluginRegistry("checkpoint provider")


def get_family(name: str) -> ModelFamily:
    """The registered family ``name`` (imports plugin packages such as ``kscale.toy`` on demand)."""
    return FAMILIES.get(name)


# ----------------------------------------------------------------------------- built-ins

def _filter(*include: str) -> ModuleFilter:
    # Block linears only; the default excludes (lm_head, embed_out) stay as a second guard.
    return ModuleFilter(include=include)


# OPT (Zhang et al. 2022). Pre-LN blocks: attention out_proj writes the residual stream that
# fc1 reads (after the final LayerNorm of the block), and fc1's hidden units feed fc2; these are
# the producer -> consumer pairs of the paper's proxy quantization (§3, App. D).
FAMILIES.register("opt", ModelFamily(
    name="opt",
    sizes={s: f"facebook/opt-{s}" for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")},
    module_filter=_filter("model.decoder.layers.*"),
    seqlen=2048,
    outlier_pairs=(
        ("model.decoder.layers.*.self_attn.out_proj", "model.decoder.layers.*.fc1"),
        ("model.decoder.layers.*.fc1", "model.decoder.layers.*.fc2"),
    ),
    description="Meta OPT, 125M-66B (GPT-2 BPE with fairseq ids; tokenizer prepends </s> as BOS)",
))

_PYTHIA_SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
# Pythia (Biderman et al. 2023, §2): every size trains 143,000 steps of 1024 x 2048 tokens
# (~300B tokens) and publishes 154 checkpoints as hub branches: step0, log-spaced
# step1 .. step512, then every 1000 steps; ``main`` is step143000.
_PYTHIA_CHECKPOINTS = dict(
    tokens_per_step=1024 * 2048,
    final_revision="step143000",
    revisions=tuple(f"step{n}" for n in [0, *(2**i for i in range(10)), *range(1000, 143_001, 1000)]),
)
# GPT-NeoX blocks use a parallel residual: attention and MLP read the same normed input, so the
# attention output (dense) reaches the next block's MLP through the residual stream; inside the
# MLP, dense_h_to_4h's hidden units feed dense_4h_to_h directly.
_NEOX_PAIRS = (
    ("gpt_neox.layers.*.attention.dense", "gpt_neox.layers.*.mlp.dense_h_to_4h"),
    ("gpt_neox.layers.*.mlp.dense_h_to_4h", "gpt_neox.layers.*.mlp.dense_4h_to_h"),
)
FAMILIES.register("pythia", ModelFamily(
    name="pythia",
    sizes={s: f"EleutherAI/pythia-{s}" for s in _PYTHIA_SIZES},
    module_filter=_filter("gpt_neox.layers.*"),
    seqlen=2048,
    outlier_pairs=_NEOX_PAIRS,
    description="EleutherAI Pythia (GPT-NeoX), trained on the Pile; no BOS added by the tokenizer",
    **_PYTHIA_CHECKPOINTS,
))
FAMILIES.register("pythia-deduped", ModelFamily(
    name="pythia-deduped",
    sizes={s: f"EleutherAI/pythia-{s}-deduped" for s in _PYTHIA_SIZES},
    module_filter=_filter("gpt_neox.layers.*"),
    seqlen=2048,
    outlier_pairs=_NEOX_PAIRS,
    description="EleutherAI Pythia trained on the deduplicated Pile",
    **_PYTHIA_CHECKPOINTS,
))

# GPT-2 stores its block linears as transformers Conv1D ([in, out] weights); c_attn is fused QKV.
FAMILIES.register("gpt2", ModelFamily(
    name="gpt2",
    sizes={
        "small": "openai-community/gpt2",
        "medium": "openai-community/gpt2-medium",
        "large": "openai-community/gpt2-large",
        "xl": "openai-community/gpt2-xl",
    },
    module_filter=_filter("transformer.h.*"),
    seqlen=1024,
    outlier_pairs=(
        ("transformer.h.*.attn.c_proj", "transformer.h.*.mlp.c_fc"),
        ("transformer.h.*.mlp.c_fc", "transformer.h.*.mlp.c_proj"),
    ),
    description="OpenAI GPT-2 (Conv1D linears, 1024-token context)",
))

# BLOOM uses ALiBi (no learned positions); GPTQ's bloom.py evaluates it at seqlen 2048.
FAMILIES.register("bloom", ModelFamily(
    name="bloom",
    sizes={**{s: f"bigscience/bloom-{s}" for s in ("560m", "1b1", "1b7", "3b", "7b1")},
           "176b": "bigscience/bloom"},
    module_filter=_filter("transformer.h.*"),
    seqlen=2048,
    outlier_pairs=(
        ("transformer.h.*.self_attention.dense", "transformer.h.*.mlp.dense_h_to_4h"),
        ("transformer.h.*.mlp.dense_h_to_4h", "transformer.h.*.mlp.dense_4h_to_h"),
    ),
    description="BigScience BLOOM, 560M-7.1B",
))
# BLOOMZ: BLOOM fine-tuned on the xP3 task mixture (Muennighoff et al. 2022), the fifth family of
# Dettmers & Zettlemoyer (2022); the same architecture, so the same filter and outlier pairs.
FAMILIES.register("bloomz", replace(
    FAMILIES.get("bloom"),
    name="bloomz",
    sizes={**{s: f"bigscience/bloomz-{s}" for s in ("560m", "1b1", "1b7", "3b", "7b1")},
           "176b": "bigscience/bloomz"},
    description="BigScience BLOOMZ (BLOOM fine-tuned on xP3), 560M-176B",
))

# Generic Llama-style decoder (also Mistral, Qwen2, ...): any label works when the user gives
# its checkpoint; the table lists the Llama-2 base models as examples (gated on the hub).
FAMILIES.register("llama", ModelFamily(
    name="llama",
    sizes={"7b": "meta-llama/Llama-2-7b-hf", "13b": "meta-llama/Llama-2-13b-hf", "70b": "meta-llama/Llama-2-70b-hf"},
    module_filter=_filter("model.layers.*"),
    seqlen=2048,
    outlier_pairs=(
        ("model.layers.*.self_attn.o_proj", "model.layers.*.mlp.up_proj"),
        ("model.layers.*.mlp.up_proj", "model.layers.*.mlp.down_proj"),
    ),
    open_sizes=True,
    description="Any Llama-architecture AutoModelForCausalLM checkpoint (sizes given by the user)",
))
