"""A model family is data: a name, a size table, which linears to quantize, a sequence length.

The size table maps the labels users type (``125m``) to hub ids (``facebook/opt-125m``),
ordered from smallest to largest. Families whose checkpoints kscale builds itself (the
``toy`` ladder) name a checkpoint *provider* instead of relying on the hub.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kscale.quant.filter import ModuleFilter
from kscale.registry import Registry


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
            the consumer that stay in 16 bit (Dettmers & Zettlemoyer 2022, §3).
        provider: name in :data:`PROVIDERS` that materialises local checkpoints, or None (hub).
    """

    name: str
    sizes: Mapping[str, str]
    module_filter: ModuleFilter = field(default_factory=ModuleFilter)
    seqlen: int = 2048
    outlier_pairs: tuple[tuple[str, str], ...] = ()
    provider: str | None = None
    description: str = ""


class CheckpointProvider(Protocol):
    """Builds checkpoints that are not on the hub (e.g. trains the toy ladder)."""

    def locate(self, size: str, options: Mapping[str, Any]) -> Path:
        """Where the checkpoint of ``size`` is or will be; does no work."""

    def ensure(self, sizes: Sequence[str], options: Mapping[str, Any]) -> dict[str, Path]:
        """Build whatever is missing and return ``size -> checkpoint dir``."""


FAMILIES: Registry[ModelFamily] = Registry("model family")
PROVIDERS: Registry[CheckpointProvider] = Registry("checkpoint provider")


def get_family(name: str) -> ModelFamily:
    return FAMILIES.get(name)
