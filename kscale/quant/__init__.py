"""k-bit quantization core: data types, block-wise quantization, the bit ledger, methods.

See docs/ARCHITECTURE.md (``kscale.quant``) for the contract. GPTQ and proxy quantization
(issue 7) build on :func:`block_constants` and :func:`nearest_code`.
"""
from __future__ import annotations

from kscale.quant._fast import (
    compile_stats,
    compiled_kernel_available,
    get_kernel,
    set_kernel,
    take_compile_seconds,
    take_kernels,
)
from kscale.quant.core import (
    BlockLayout,
    QuantizedTensor,
    block_constants,
    block_layout,
    codebook,
    nearest_code,
    normalize_blocks,
    quantize,
    store_constant,
    to_blocks,
)
from kscale.quant.dtypes import DTYPES, DataType
from kscale.quant.filter import ModuleFilter
from kscale.quant.formats import FORMATS, StorageFormat, fake_quantize, fake_quantize_, format_of, pack
from kscale.quant.ledger import BitLedger, LedgerRow, ledger_for, tensor_row
from kscale.quant.methods import METHODS, apply_method
from kscale.quant.model import WeightSnapshot, quantize_matrix, quantize_matrix_, quantize_model
from kscale.quant.modules import quantizable_modules, set_weight_matrix, weight_matrix
from kscale.quant.spec import QuantSpec

__all__ = [
    "FORMATS",
    "StorageFormat",
    "format_of",
    "pack",
    "METHODS",
    "BitLedger",
    "LedgerRow",
    "WeightSnapshot",
    "apply_method",
    "ledger_for",
    "quantizable_modules",
    "quantize_matrix",
    "quantize_matrix_",
    "quantize_model",
    "set_weight_matrix",
    "tensor_row",
    "weight_matrix",
    "DTYPES",
    "BlockLayout",
    "DataType",
    "ModuleFilter",
    "QuantSpec",
    "QuantizedTensor",
    "block_constants",
    "block_layout",
    "codebook",
    "compile_stats",
    "compiled_kernel_available",
    "fake_quantize",
    "fake_quantize_",
    "get_kernel",
    "nearest_code",
    "normalize_blocks",
    "quantize",
    "set_kernel",
    "store_constant",
    "take_compile_seconds",
    "take_kernels",
    "to_blocks",
]

# Methods and helpers built on the core. Importing gptq registers METHODS["gptq"]
# (registries fill only when their module is imported).
from kscale.quant import gptq as _gptq  # noqa: E402,F401
from kscale.quant import awq as _awq  # noqa: E402,F401
from kscale.quant.calibration import CalibrationConfig, calibration_tokens  # noqa: E402
from kscale.quant.gptq import GPTQConfig  # noqa: E402
from kscale.quant.outliers import keep_columns_for, outlier_keep_columns  # noqa: E402

__all__ += ["CalibrationConfig", "GPTQConfig", "calibration_tokens", "keep_columns_for",
            "outlier_keep_columns"]
