"""llama.cpp (ggml) storage formats as bit-ledger checks.

Not in REFERENCES.md: the bits per weight here are *derived* from the formats' block structs
in ggml's ``ggml-common.h`` (each with a ``static_assert`` on its size), so they are arithmetic
on the layout, not transcribed numbers:

* ``block_q4_0``: 32 weights = one fp16 scale ``d`` (2 bytes) + 16 bytes of 4-bit quants
  -> 18 bytes / 32 weights = 4.5 bits per weight.
* ``block_q8_0``: 32 weights = fp16 ``d`` + 32 int8 quants -> 34 bytes / 32 = 8.5.
* ``block_q4_K``: a 256-weight super-block = fp16 ``d`` + fp16 ``dmin`` + 12 bytes of 6-bit
  scales and mins for its 8 sub-blocks of 32 + 128 bytes of quants -> 144 bytes / 256 = 4.5
  (the header comment says "Effectively 4.5 bits per weight").

kscale's registered format of the same name (``kscale.quant.FORMATS``: ``q4_0``, ``q8_0``,
``q4_k``) must cost exactly these bits: :func:`ledger_check` asks the registry, so there is no
second table of bits per weight here. The block-wise format stores the same bits for the
one-level types too: Q4_0 is ``bits=4, blocksize=32, scale_bits=16`` (4 + 16/32), Q8_0 is
``bits=8`` likewise; Q4_K's two-level constants (6-bit sub-block scales under fp16 super-block
scales) have no ``QuantSpec`` equivalent, only its own format.
"""
from __future__ import annotations

from typing import Any

from kscale.references.core import FORMATS, StorageFormat

_SRC = "ggml ggml-common.h block structs (sizes asserted there); derived, not from REFERENCES.md"

FORMATS.register("Q4_0", StorageFormat(
    "Q4_0", 32, 2 + 16, "fp16 d + 32 x 4-bit quants", _SRC,
    kscale_spec={"bits": 4, "dtype": "int", "blocksize": 32, "scale_bits": 16}, published_bpw=4.5))
FORMATS.register("Q8_0", StorageFormat(
    "Q8_0", 32, 2 + 32, "fp16 d + 32 x int8 quants", _SRC,
    kscale_spec={"bits": 8, "dtype": "int", "blocksize": 32, "scale_bits": 16}, published_bpw=8.5))
FORMATS.register("Q4_K", StorageFormat(
    "Q4_K", 256, 2 + 2 + 12 + 128, "fp16 d + fp16 dmin + 8 x (6-bit scale, 6-bit min) + 256 x 4-bit", _SRC,
    kscale_spec=None, published_bpw=4.5))


def ledger_check(name: str, shape: tuple[int, int] = (4096, 4096)) -> dict[str, Any]:
    """Compare a format's bits per weight (from its block struct) with kscale's registered format.

    Returns ``{format, format_bpw, published_bpw, kscale_format, kscale_bpw, match, kscale_spec,
    blockwise_bpw, note}``: ``kscale_bpw`` is the exact cost of a ``shape`` tensor in the kscale
    format ``name.lower()`` (``None`` with a note when this checkout has no such format);
    ``blockwise_bpw`` the cost of the equivalent ``QuantSpec`` where one exists.
    """
    # on use: kscale.references imports without torch
    from kscale.quant import FORMATS as KSCALE_FORMATS
    from kscale.quant import QuantSpec
    from kscale.quant.ledger import tensor_row

    fmt = FORMATS.get(name)
    out: dict[str, Any] = {"format": name, "format_bpw": fmt.bits_per_weight,
                           "published_bpw": fmt.published_bpw, "kscale_format": name.lower(),
                           "kscale_spec": fmt.kscale_spec, "blockwise_bpw": None, "note": ""}
    numel = shape[0] * shape[1]
    if fmt.kscale_spec is not None:
        out["blockwise_bpw"] = tensor_row("w", shape, QuantSpec(**fmt.kscale_spec)).total_bits / numel
    if name.lower() not in KSCALE_FORMATS.names():
        out.update(kscale_bpw=None, match=None, note=f"kscale has no format {name.lower()!r} in this checkout")
        return out
    obj = KSCALE_FORMATS.get(name.lower())
    bpw = obj.tensor_cost(shape, obj.configure()).total_bits / numel
    out.update(kscale_bpw=bpw, match=bpw == fmt.bits_per_weight)
    return out
