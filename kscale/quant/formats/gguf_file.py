"""llama.cpp's file types as formats: ``ftype_q2_k_s ... ftype_q8_0`` (per-tensor recipes).

A file type (``llama-quantize model.gguf Q4_K_M``) is not one block type: llama.cpp picks a GGUF
type per tensor by its role and layer (:mod:`kscale.quant.gguf.recipes`, which cites the source)
and *also* quantizes the token embedding and the output head. Each file type is registered as
``ftype_<name>`` -- a name of its own, because ``q6_k`` and ``q8_0`` are already the per-tensor
types -- so ``format=ftype_q4_k_m`` is one value of the sweep's format axis like any other.

What such a format quantizes is the recipe's, not the family's module filter: every 2-D weight
of the model (linear layers, the token embedding, the head) at the type the recipe gives it;
position embeddings, norms and biases stay at 16 bits as in llama.cpp. The ledger counts every
tensor at its type's exact ggml size and says so in ``quant_scope``; rows carry ``stored_types``,
the number of weights stored in each type (JSON).

Tied embeddings: kscale's model holds one tensor for the embedding and the head, so it is stored
once, under the embedding's name, at the type llama.cpp gives a ``token_embd`` that doubles as
the head (a file without ``output.weight``: q6_k, or q8_0 where the base is q8_0), and the
ledger counts it once. (llama.cpp's converter writes gpt2 and bloom heads as a second copy; a
GGUF file of those holds the embedding twice -- kscale counts the one tensor the model computes
with.) ``imatrix=true`` gives each tensor of a type that takes one the importance matrix of its
module's inputs; the tied tensor gets the head's (llama.cpp's imatrix tool sees it in the head's
matmul), an untied embedding none (it is a row lookup, not a matmul).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kscale.quant.formats.base import (
    StorageFormat,
    TensorTarget,
    register_format,
)
from kscale.quant.formats.gguf import GGUFTypeConfig, ImatrixTypeConfig
from kscale.quant.gguf import GGUF_TYPES, recipes
from kscale.quant.modules import QUANTIZABLE_TYPES

__all__ = ["FTYPE_PREFIX", "GGUFFileConfig", "GGUFFileFormat", "RECIPE_SCOPE"]

#: registry names are ``ftype_`` + llama.cpp's file-type name in lower case
FTYPE_PREFIX = "ftype_"
#: the ``quant_scope`` of every row quantized with a file type
RECIPE_SCOPE = ("llama.cpp file-type recipe: every 2-D weight (linear layers, token embedding, output head; "
                "a tied embedding/head once) at its recipe type; position embeddings, norms, biases at 16 bit")
F16 = "f16"


@dataclass(frozen=True)
class GGUFFileConfig(ImatrixTypeConfig):
    """A llama.cpp file type; ``imatrix`` = every tensor whose type takes an importance matrix
    gets the one of its inputs. ``llama-quantize`` refuses ``q2_k_s`` without one; kscale allows
    ``imatrix=false`` so a grid can measure what the importance matrix buys."""

    def __post_init__(self) -> None:
        file_types = recipes.FILE_TYPES
        if self.file_type not in file_types or not self.name.startswith(FTYPE_PREFIX):
            raise ValueError(f"unknown GGUF file type {self.name!r}; file types: "
                             f"{', '.join(FTYPE_PREFIX + f for f in file_types)}")
        if not isinstance(self.imatrix, bool):
            raise ValueError(f"imatrix must be true or false; got {self.imatrix!r}")
        if self.imatrix and not self.takes_imatrix:
            raise ValueError(f"file type {self.file_type} (base {self.base_type}) takes no importance "
                             "matrix; set imatrix=false")

    @property
    def file_type(self) -> str:
        return self.name.removeprefix(FTYPE_PREFIX)

    @property
    def base_type(self) -> str:
        return recipes.FILE_TYPES[self.file_type]

    @property
    def gguf_type(self) -> str:
        return self.base_type


def _takes_imatrix(gguf_type: str) -> bool:
    return gguf_type in GGUF_TYPES and GGUF_TYPES[gguf_type].takes_imatrix


class GGUFFileFormat(StorageFormat):
    """One llama.cpp file type (one registered instance per type). Its tensors' types depend on
    their roles, so it has no single-tensor cost or bytes: ask :meth:`targets` for the model's."""

    config_class = GGUFFileConfig
    per_tensor_recipe = True
    quant_scope = RECIPE_SCOPE

    def __init__(self, file_type: str, base_type: str) -> None:
        self.name = FTYPE_PREFIX + file_type
        self.base_type = base_type
        self.axes = ("imatrix",) if _takes_imatrix(base_type) else ()
        self.description = f"llama.cpp file type {file_type.upper()} (base {base_type}, per-tensor recipe)"

    def option_names(self) -> list[str]:
        return list(self.axes)

    def _build(self, options):
        return GGUFFileConfig(self.name, **options)

    def _single(self, what: str):
        return ValueError(f"format {self.name} is a per-tensor recipe: a tensor's type depends on its role "
                          f"and layer, so {what} needs the model (quantize_model, ledger_for, kscale.export); "
                          f"for one tensor use its base type {self.base_type}")

    def fake_quantize_(self, w, config, **_: Any):
        raise self._single("fake quantization")

    def tensor_cost(self, shape, config, n_kept_columns: int = 0):
        raise self._single("its cost")

    def pack(self, w, config, **_: Any):
        raise self._single("packing")

    def targets(self, model: nn.Module, config: GGUFFileConfig) -> list[TensorTarget]:
        assignment = recipes.recipe_for_torch_model(model, config.file_type)
        modules = dict(model.named_modules())
        head_of = _linear_users(model)
        out, seen = [], set()
        for name, a in assignment.items():
            module = modules[name]
            if a.gguf_type == F16 and a.role in recipes.UNQUANTIZED:
                continue
            if id(module.weight) in seen:
                continue  # the head of a tied pair: stored once, as the embedding
            seen.add(id(module.weight))
            gtype = a.gguf_type
            user = name if not isinstance(module, nn.Embedding) else head_of.get(id(module.weight))
            if isinstance(module, nn.Embedding) and user is not None:  # tied: the head's type
                gtype = recipes.gguf_file_type_for("output", None, 1, config.file_type,
                                                   n_per_row=a.shape[1])
            # a tensor the recipe keeps in F16 (rows not a multiple of 32): q8_0 stores exactly that
            tensor_config = GGUFTypeConfig("q8_0" if gtype == F16 else gtype,
                                           imatrix=config.imatrix and _takes_imatrix(gtype) and user is not None)
            out.append(TensorTarget(name, module, tensor_config, gtype, user if tensor_config.imatrix else None))
        return out


def _linear_users(model: nn.Module) -> dict[int, str]:
    """id(weight) -> name of the (first) linear module computing with it: finds a tied head."""
    out: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZABLE_TYPES) and isinstance(getattr(module, "weight", None), torch.Tensor):
            out.setdefault(id(module.weight), name)
    return out


def register_all() -> list[str]:
    """Register ``ftype_<name>`` for every file type of :data:`recipes.FILE_TYPES`."""
    return [register_format(GGUFFileFormat(ft, base)).name for ft, base in recipes.FILE_TYPES.items()]


register_all()
