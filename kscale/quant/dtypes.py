"""k-bit data types as codebooks: sorted tables of code values in [-1, 1].

Every data type of the k-bit study (Dettmers & Zettlemoyer 2022, §2.2 and App. A) is a
*quantization map*: a value is normalised by its block constant, replaced by the nearest
code, and dequantized by lookup times the constant. So a data type is fully described by
its codebook; ``DTYPES`` maps the config/result-row name to the function building it.

- ``int``      symmetric integer levels, {-(2^(k-1)-1) .. 2^(k-1)-1} / (2^(k-1)-1).
- ``float``    sign + E exponent + M mantissa bits with subnormals, no inf/NaN, normalised to max 1.
- ``dynamic``  dynamic exponent (Dettmers 2016; bitsandbytes ``create_dynamic_map``) for k bits.
- ``quantile`` the paper's quantile type, estimated from the tensor being quantized (data dependent).
- ``nf``       NormalFloat (QLoRA; bitsandbytes ``create_normal_map``), NF4 for k=4.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kscale.registry import Registry

__all__ = [
    "DTYPES",
    "DataType",
    "int_codebook",
    "float_codebook",
    "dynamic_codebook",
    "nf_codebook",
    "quantile_codebook",
    "nf_offset",
]


@dataclass(frozen=True)
class DataType:
    """A registered k-bit data type.

    Attributes:
        name: registry / config / result-row name.
        build: ``build(bits, exponent_bits) -> Tensor`` for fixed types; ``None`` for data-dependent ones.
        data_dependent: the codebook is estimated from the tensor (``quantile``); it is then stored
            per tensor (2^k values at 16 bits) and that cost is counted in the ledger.
        default_exponent_bits: ``f(bits) -> int`` for types with an exponent field, else ``None``.
        description: one line for docs and ``--help``.
    """

    name: str
    build: Callable[[int, int | None], torch.Tensor] | None
    data_dependent: bool = False
    default_exponent_bits: Callable[[int], int] | None = None
    description: str = ""


DTYPES: Registry[DataType] = Registry("dtype")


def int_codebook(bits: int, exponent_bits: int | None = None) -> torch.Tensor:
    """Symmetric integer levels: 2^k - 1 values, equally many positive and negative (App. A).

    The most negative two's-complement level is dropped so that the type is symmetric and
    the absmax maps exactly onto +-1 (Int8 is +-127/127, like bitsandbytes' linear map).
    """
    top = 2 ** (bits - 1) - 1
    return torch.arange(-top, top + 1, dtype=torch.float64).div(top).float()


def float_codebook(bits: int, exponent_bits: int | None = None) -> torch.Tensor:
    """Sign + E exponent bits + M = k-1-E mantissa bits; subnormals, every exponent field is
    a number (no inf/NaN codes), bias 2^(E-1)-1, normalised so the largest magnitude is 1.

    Normal values are (1 + m/2^M) * 2^(e - bias) for e >= 1, subnormals m/2^M * 2^(1 - bias).
    The bias only rescales the grid, which the normalisation removes; it is kept for clarity.
    +0 and -0 coincide, so there are 2^k - 1 distinct codes. E=2, M=1 gives the OCP E2M1
    magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}/6. Default E is ceil(k/2) (App. C.4).
    """
    e_bits = math.ceil(bits / 2) if exponent_bits is None else exponent_bits
    m_bits = bits - 1 - e_bits
    if e_bits < 1 or m_bits < 0:
        raise ValueError(
            f"exponent_bits for a {bits}-bit float must be in 1..{bits - 1}; got {e_bits}"
        )
    bias = 2 ** (e_bits - 1) - 1
    mags = []
    for e in range(2**e_bits):
        for m in range(2**m_bits):
            frac = m / 2**m_bits
            mags.append(frac * 2.0 ** (1 - bias) if e == 0 else (1 + frac) * 2.0 ** (e - bias))
    mags_t = torch.tensor(sorted(set(mags)), dtype=torch.float64)
    mags_t = mags_t / mags_t.max()
    return torch.cat([-mags_t.flip(0)[:-1], mags_t]).float()  # -0 == +0: keep one zero


def dynamic_codebook(bits: int, exponent_bits: int | None = None) -> torch.Tensor:
    """Dynamic exponent type (Dettmers 2016), bitsandbytes ``create_dynamic_map(signed=True)``
    generalised to k bits.

    Bits after the sign: a run of zeros whose length i gives a base-10 exponent 10^-(E-1-i),
    an indicator bit, then a linear fraction that bisects [0.1, 1] into 2^(i + k-1 - E) equal
    intervals whose midpoints are the codes. Codes left over fill the last level; 0 and 1.0 are
    added. With the maximum number of exponent levels E = k-1 (bitsandbytes' default of 7 for
    8 bits) this yields exactly 2^k distinct codes, smallest positive 0.55*10^-(k-2).
    ``exponent_bits`` overrides E (1..k-1).
    """
    max_exp = bits - 1 if exponent_bits is None else exponent_bits
    non_sign = bits - 1
    if not 1 <= max_exp <= non_sign:
        raise ValueError(
            f"exponent_bits for a {bits}-bit dynamic type must be in 1..{non_sign}; got {max_exp}"
        )
    data: list[float] = []

    def add_level(n_items: int, level: int) -> None:
        # float32 linspace as in bitsandbytes, so 8-bit codes match create_dynamic_map.
        bounds = torch.linspace(0.1, 1, n_items, dtype=torch.float32)
        means = ((bounds[:-1] + bounds[1:]) / 2.0).tolist()
        data.extend(10 ** (-(max_exp - 1) + level) * v for v in means)
        data.extend(-(10 ** (-(max_exp - 1) + level)) * v for v in means)

    for i in range(max_exp):
        add_level(2 ** (i + non_sign - max_exp) + 1, i)
    extra = 2 ** (non_sign - max_exp) - 1
    if extra > 0:
        add_level(extra + 1, max_exp - 1)
    data += [0.0, 1.0]
    assert len(data) == 2**bits, len(data)
    return torch.tensor(sorted(data), dtype=torch.float64).float()


def nf_offset(bits: int) -> float:
    """Outermost normal quantile of NormalFloat-k.

    bitsandbytes' NF4 offset 0.9677083 is the mean of the two "centred" outermost quantile
    positions 1 - 1/(2n) for n = 2^k - 1 and n = 2^k codes: 1 - (1/30 + 1/32)/2 = 0.96770833.
    bitsandbytes hard-codes that value rounded to 7 decimals; kscale applies the same rule,
    rounded the same way, for every k ("the same construction"), so k=4 reproduces NF4 exactly.
    """
    n = 2**bits
    return round(1.0 - 0.5 * (1.0 / (2 * (n - 1)) + 1.0 / (2 * n)), 7)


def nf_codebook(bits: int, exponent_bits: int | None = None) -> torch.Tensor:
    """NormalFloat-k: normal quantiles, 2^(k-1) positive, 2^(k-1)-1 negative, plus 0.

    As bitsandbytes ``create_normal_map(offset, use_extra_value=True)``: the inverse normal CDF
    at 2^(k-1)+1 points linearly spaced from ``offset`` to 0.5 (0.5 dropped) gives the positive
    half, 2^(k-1) points (0.5 dropped) the negative half; add 0, divide by the maximum.
    For k=4 this is the NF4 table to 7 decimals.
    """
    offset = nf_offset(bits)
    half = 2 ** (bits - 1)
    # float32 probability grid (as bitsandbytes' torch.linspace), inverse CDF in float64.
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, half + 1).double()[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, half).double()[:-1])
    values = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).sort().values
    return (values / values.max()).float()


def quantile_codebook(x_normalized: torch.Tensor, bits: int) -> torch.Tensor:
    """The paper's quantile type (§2.2): code i, i = 0..2^k-1, is the mean of the empirical
    quantiles at i/(2^k+1) and (i+1)/(2^k+1) of ``x_normalized`` (the block-normalised tensor).

    The paper estimates the quantiles with SRAM-Quantiles; kscale computes them exactly (sort
    and linear interpolation, as ``torch.quantile``, which refuses tensors above 2^24 values).

    The midpoints never reach the top quantile, so taken literally the largest code sits below
    every block's absmax (which normalisation maps to exactly +-1) and each block's largest
    weight would be clipped. As bitsandbytes' ``create_quantile_map`` did, the codes are then
    divided by their largest magnitude, so the extreme code is exactly +-1 and the block maximum
    is represented without error; the code spacing (the part that follows the distribution) is
    unchanged up to that scale.
    Returns 2^k sorted float32 codes (duplicates possible for degenerate inputs).
    """
    flat = x_normalized.reshape(-1).float()
    if flat.numel() == 0:
        raise ValueError("quantile codebook needs a non-empty tensor; got 0 values")
    n_codes = 2**bits
    srt = flat.sort().values.double()
    probs = torch.arange(n_codes + 1, dtype=torch.float64, device=srt.device) / (n_codes + 1)
    pos = probs * (srt.numel() - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    q = srt[lo] + (srt[hi] - srt[lo]) * (pos - lo)
    mids = (q[:-1] + q[1:]) / 2
    peak = mids.abs().max()
    if peak > 0:
        mids = mids / peak
    return mids.float()


DTYPES.register("int", DataType("int", int_codebook, description="symmetric integer levels"))
DTYPES.register(
    "float",
    DataType(
        "float",
        float_codebook,
        default_exponent_bits=lambda bits: math.ceil(bits / 2),
        description="sign/exponent/mantissa with subnormals, no inf/NaN",
    ),
)
DTYPES.register(
    "dynamic",
    DataType(
        "dynamic",
        dynamic_codebook,
        default_exponent_bits=lambda bits: bits - 1,
        description="dynamic exponent (bitsandbytes create_dynamic_map)",
    ),
)
DTYPES.register(
    "quantile",
    DataType("quantile", None, data_dependent=True, description="empirical quantiles of the tensor"),
)
DTYPES.register("nf", DataType("nf", nf_codebook, description="NormalFloat (NF4 for 4 bits)"))
