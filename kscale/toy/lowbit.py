"""Training the toy ladder in low precision (issue 20 §2): quantization-aware training, as Kumar et al.
("Scaling Laws for Precision", ICLR 2025) train their models.

Each optimizer step from ``qat_from`` of the token budget on runs its forward pass with

* weights (every linear kscale quantizes after training: :func:`kscale.quant.quantizable_modules`)
  fake-quantized to ``train_bits_w`` by the same round-to-nearest format a post-training ``rtn``
  cell uses (``QuantSpec(bits, "int", blocksize=64)``), so a model trained at w4 and quantized to
  w4 after training evaluates exactly the weights it was trained with;
* activations (inputs of those linears) at ``train_bits_a`` and keys/values at ``train_bits_kv``
  through the inference quantizers of :mod:`kscale.quant.runtime` (per token, per head).

The backward pass is straight-through: gradients are taken at the quantized weights and applied
to fp32 master weights, which are restored before the optimizer step (the quantized values exist
only between forward and backward); the run-time quantizers pass gradients unchanged. The saved
checkpoints hold the master weights. Data, schedule and initialisation are the full-precision
rung's. ``qat_from`` (Dremov et al. 2025, "Compute-optimal quantization-aware training") is the
fraction of the budget trained in full precision first; 0 = quantized from the first step.

All 16 (the default) is the full-precision recipe untouched: no hook, no copy, the same weights
and the same cache key as before this option existed.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

FULL_BITS = 16
#: Weight format used while training (and the one a post-training ``rtn`` cell uses by default).
WEIGHT_BLOCKSIZE = 64
#: The provider options this module reads, with their defaults (full precision from the start).
OPTION_DEFAULTS: dict[str, Any] = {"train_bits_w": FULL_BITS, "train_bits_a": FULL_BITS,
                                   "train_bits_kv": FULL_BITS, "qat_from": 0.0}


def _bits(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (2 <= value <= 8 or value == FULL_BITS):
        raise ValueError(f"{name} must be an integer in 2..8, or 16 = full-precision training; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TrainPrecision:
    """Training precision of weights, activations and KV cache, and when quantized training starts.

    Attributes:
        w, a, kv: bits (2..8, 16 = full precision) of weights, linear inputs and keys/values.
        qat_from: fraction of the token budget trained in full precision before the quantized
            forward takes over, 0 <= qat_from < 1 (0 = from the start).
    """

    w: int = FULL_BITS
    a: int = FULL_BITS
    kv: int = FULL_BITS
    qat_from: float = 0.0

    def __post_init__(self) -> None:
        for name, attr in (("train_bits_w", "w"), ("train_bits_a", "a"), ("train_bits_kv", "kv")):
            object.__setattr__(self, attr, _bits(name, getattr(self, attr)))
        if isinstance(self.qat_from, bool) or not isinstance(self.qat_from, (int, float)) or \
                not 0 <= float(self.qat_from) < 1:
            raise ValueError(f"qat_from must be a fraction of the token budget in [0, 1); got {self.qat_from!r}")
        object.__setattr__(self, "qat_from", float(self.qat_from))
        if self.is_full and self.qat_from:
            raise ValueError(f"qat_from={self.qat_from:g} needs a training precision below 16 bits "
                             "(train_bits_w, train_bits_a or train_bits_kv)")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TrainPrecision:
        """From provider options ``train_bits_w/a/kv`` and ``qat_from`` (missing = default)."""
        get = {**OPTION_DEFAULTS, **{k: v for k, v in options.items() if k in OPTION_DEFAULTS}}
        return cls(get["train_bits_w"], get["train_bits_a"], get["train_bits_kv"], get["qat_from"])

    @property
    def is_full(self) -> bool:
        """Full-precision training: the recipe (and cache key) of the ladder without this option."""
        return self.w == self.a == self.kv == FULL_BITS

    def to_options(self) -> dict[str, Any]:
        return {"train_bits_w": self.w, "train_bits_a": self.a, "train_bits_kv": self.kv, "qat_from": self.qat_from}

    def to_row(self) -> dict[str, Any]:
        """Result-row columns (the same names as the options)."""
        return self.to_options()

    def key(self) -> dict[str, Any] | None:
        """The cache key's part: None in full precision (so today's key is unchanged), else the
        precisions, the start and the quantizers used (changing a quantizer changes the weights)."""
        if self.is_full:
            return None
        return {**self.to_options(), "weights": f"int-block{WEIGHT_BLOCKSIZE}", "act": "int-token",
                "kv": "int-head"}

    def start_step(self, steps: int) -> int:
        """The first optimizer step (0-based) trained with the quantized forward."""
        return min(steps, math.ceil(self.qat_from * steps))

    def forward(self, model: Any, step: int, steps: int):
        """The context one optimizer step's forward and backward run in (a no-op before
        :meth:`start_step` and in full precision)."""
        if self.is_full or step < self.start_step(steps):
            return contextlib.nullcontext()
        return _quantized_step(model, self)


@contextlib.contextmanager
def _quantized_step(model: Any, precision: TrainPrecision) -> Iterator[None]:
    """Weights fake-quantized in place (masters saved), run-time quantizers hooked; both undone
    on exit. Forward *and* backward must run inside: autograd keeps the quantized weights."""
    from kscale.quant import QuantSpec
    from kscale.quant.model import WeightSnapshot, quantize_model
    from kscale.quant.runtime import RuntimePrecision, RuntimeQuantSpec, runtime_quantization

    runtime = RuntimePrecision(act=RuntimeQuantSpec(precision.a, "token", kind="act"),
                               kv=RuntimeQuantSpec(precision.kv, "head", kind="kv"))
    snapshot = WeightSnapshot(model) if precision.w != FULL_BITS else None
    try:
        if snapshot is not None:
            quantize_model(model, QuantSpec(precision.w, "int", blocksize=WEIGHT_BLOCKSIZE), progress=False)
        with runtime_quantization(model, runtime):
            yield
    finally:
        if snapshot is not None:
            snapshot.restore()
