"""The storage-format object: what one registered format owns, and the registry it lives in.

A *format* is how a weight matrix is stored: the paper's block-wise k-bit types, llama.cpp's
GGUF block types, the OCP microscaling types. Everything that depends on which format a cell
uses lives in one object per format (the same idea as :mod:`kscale.quant.methods`), so the
ledger, the grid, the rows and the analysis never read format fields themselves:

* ``config_class`` -- its frozen, validated config; ``axes`` -- the sweep axes it takes (the
  config's fields). A grid crossing a format with an axis it does not take expands per format.
* :meth:`StorageFormat.fake_quantize_` -- quantize then dequantize, in the weight's own storage
  (a :class:`kscale.quant.WeightSnapshot` taken before restores it bit for bit).
* :meth:`StorageFormat.tensor_cost` -- the **exact** bits one [out, in] matrix costs; the
  :class:`kscale.quant.BitLedger` asks this and does no bit arithmetic of its own.
* :meth:`StorageFormat.pack` -- the bytes it would store (``8 * len(pack(w)) == cost``).
* :meth:`StorageFormat.row` / :meth:`StorageFormat.label` -- its result-row columns and name.

Every config object answers ``.format`` (its format's registry name), ``.is_baseline``,
``.label`` and ``.to_row()``; ``format_of(config)`` finds the object.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from kscale.registry import Registry, did_you_mean

__all__ = ["F16", "F16_BITS", "FORMATS", "DEFAULT_FORMAT", "NamedTypeConfig", "StorageFormat", "TensorCost",
           "TensorTarget", "format_of", "register_format", "resolve_format", "rows_fit_blocks"]

#: The format of every cell that names none: the paper's block-wise k-bit types.
DEFAULT_FORMAT = "blockwise"
#: bits per weight of a tensor a format leaves (or falls back to) in 16-bit floating point
F16_BITS = 16
#: the stored type of a matrix whose rows a block format cannot block (llama.cpp's last fallback)
F16 = "f16"


def rows_fit_blocks(n_per_row: int, block_values: int) -> bool:
    """The one rule of every block format: a matrix is stored in the format only if each row is
    a whole number of blocks (llama.cpp blocks rows, never across them); otherwise in F16."""
    return int(n_per_row) % int(block_values) == 0


@dataclass(frozen=True)
class TensorCost:
    """Exact storage cost of one weight matrix of ``numel`` values, split by what the bits are.

    ``payload_bits``: the per-value codes; ``constant_bits``: every stored scale, minimum,
    sub-block scale and codebook; ``other_bits``: values kept outside the format (16-bit
    outlier columns, a tensor a GGUF type cannot block and stores in F16)."""

    payload_bits: int
    constant_bits: int = 0
    other_bits: int = 0

    @property
    def total_bits(self) -> int:
        return self.payload_bits + self.constant_bits + self.other_bits


@dataclass(frozen=True)
class TensorTarget:
    """One weight a per-tensor-recipe format quantizes (:meth:`StorageFormat.targets`).

    ``name``: the module's name; ``module``: the module holding ``weight`` (an ``nn.Linear``,
    ``Conv1D`` or ``nn.Embedding``); ``config``: the per-tensor format config it is stored in;
    ``stored_type``: what the file stores (``q6_k``, ``f16``, ...); ``imatrix_from``: the module
    whose input activations give its importance matrix (None: llama.cpp collects none for it)."""

    name: str
    module: Any
    config: Any
    stored_type: str
    imatrix_from: str | None = None


@dataclass(frozen=True)
class NamedTypeConfig:
    """Base config of a format that is one named type (a GGUF or MX type): the name is the
    format, its ``bits`` the nominal element width, and it is never the 16-bit baseline."""

    name: str

    @property
    def format(self) -> str:
        return self.name

    @property
    def is_baseline(self) -> bool:
        return False

    @property
    def needs_calibration(self) -> bool:
        return False

    @property
    def label(self) -> str:
        return self.name

    def to_row(self) -> dict[str, Any]:
        return {"format": self.name, "bits": self.bits}


class StorageFormat:
    """One registered storage format; subclass, set the class attributes, implement the methods."""

    name: str
    config_class: ClassVar[type]
    #: sweep axes this format takes (names of its config's fields, as the grid spells them)
    axes: ClassVar[tuple[str, ...]] = ()
    #: True for formats that choose a type per tensor and also decide embeddings and the head
    per_tensor_recipe: ClassVar[bool] = False
    #: a per-tensor recipe's ``quant_scope`` row column (what it quantizes, replacing the filter's)
    quant_scope: ClassVar[str | None] = None
    description: str = ""

    # ------------------------------------------------------------------ configuration

    def option_names(self) -> list[str]:
        return sorted(f.name for f in fields(self.config_class) if f.init and f.name != "name")

    def configure(self, **options: Any) -> Any:
        """The validated config for ``options`` (unknown keys rejected with a did-you-mean)."""
        allowed = self.option_names()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"format {self.name} takes no option {unknown[0]!r}.{did_you_mean(unknown[0], allowed)}"
                f" Its options: {', '.join(allowed) or 'none'}")
        return self._build(options)

    def _build(self, options: Mapping[str, Any]) -> Any:
        return self.config_class(**options)

    # ------------------------------------------------------------------ the format's job

    def fake_quantize_(self, w: torch.Tensor, config: Any, *, imatrix: torch.Tensor | None = None,
                       **kw: Any) -> torch.Tensor:
        """Quantize then dequantize ``w`` ([out, in]) into its own storage; returns ``w``."""
        raise NotImplementedError

    def tensor_cost(self, shape: tuple[int, ...], config: Any, n_kept_columns: int = 0) -> TensorCost:
        """Exact bits of an [out, in] matrix stored in this format (``n_kept_columns`` input
        columns kept in 16 bit, for formats that take ``outlier_frac``)."""
        raise NotImplementedError

    def pack(self, w: torch.Tensor, config: Any) -> bytes:
        """The bytes this format stores for ``w`` (its whole tensor payload and constants)."""
        raise NotImplementedError

    def stored_type(self, shape: tuple[int, ...], config: Any) -> str | None:
        """What an [out, in] matrix is stored as when that depends on its shape: the format's
        type, a fallback type, or :data:`F16` for rows that are not whole blocks (the ledger's
        ``stored_types`` census counts the weights per type). None: always the format itself."""
        return None

    def row(self, config: Any) -> dict[str, Any]:
        """The identity columns of a row quantized with ``config``."""
        return dict(config.to_row())

    def label(self, config: Any) -> str:
        return str(config.label)

    def targets(self, model: Any, config: Any) -> list[TensorTarget]:
        """Per-tensor-recipe formats only: every weight of ``model`` the recipe stores, once each
        (a tied embedding/head once), with its per-tensor config. The ledger, the quantizer, the
        snapshot and the export ask this instead of the module filter."""
        raise NotImplementedError(f"format {self.name} is not a per-tensor recipe")

    def check_method(self, method: str) -> None:
        """Raise ``ValueError`` if quantization method ``method`` cannot use this format."""
        if method not in ("rtn", "none"):
            raise ValueError(
                f"method {method} quantizes with the blockwise format's constants; format "
                f"{self.name} runs with method=rtn (round to nearest) only")

    def __repr__(self) -> str:
        return f"<format {self.name}>"


FORMATS: Registry[StorageFormat] = Registry("format")


def register_format(fmt: StorageFormat) -> StorageFormat:
    """Register one format object under its ``name``."""
    FORMATS.register(fmt.name, fmt)
    return fmt


def format_of(config: Any) -> StorageFormat:
    """The format object a config belongs to (``config.format`` names it)."""
    return FORMATS.get(getattr(config, "format", DEFAULT_FORMAT))


def resolve_format(fmt: Any, options: Mapping[str, Any] | None = None) -> tuple[StorageFormat, Any]:
    """``(format object, config)`` for a config object, or a registered name plus its options."""
    options = dict(options or {})
    if isinstance(fmt, str):
        obj = FORMATS.get(fmt)
        return obj, obj.configure(**options)
    if options:
        raise ValueError(f"options {sorted(options)} only go with a format name; got a config "
                         f"{type(fmt).__name__} (set them on the config)")
    return format_of(fmt), fmt
