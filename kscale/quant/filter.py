"""Which modules of a model get quantized: a small, explicit, documented filter.

The k-bit study quantizes the weights of the linear layers inside the transformer
blocks; embeddings and the LM head stay in 16 bit by default (the paper is silent on
them, so kscale makes the choice explicit, configurable and recorded in each row).
Patterns are ``fnmatch`` globs over qualified module names as ``model.named_modules()``
yields them, e.g. ``"model.decoder.layers.*.self_attn.q_proj"`` or ``"*.mlp.*"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class ModuleFilter:
    """Select modules by name: included by any ``include`` glob and by no ``exclude`` glob.

    Only ``nn.Linear`` and ``transformers``' ``Conv1D`` modules are ever candidates
    (see :func:`kscale.quant.modules.quantizable_modules`); the filter narrows those.
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ("lm_head", "*.lm_head", "embed_out", "*.embed_out")

    def __post_init__(self) -> None:
        for field_name in ("include", "exclude"):
            value = getattr(self, field_name)
            if isinstance(value, str):
                object.__setattr__(self, field_name, (value,))
            else:
                object.__setattr__(self, field_name, tuple(value))

    def matches(self, name: str) -> bool:
        included = any(fnmatchcase(name, pattern) for pattern in self.include)
        excluded = any(fnmatchcase(name, pattern) for pattern in self.exclude)
        return included and not excluded
