"""Dense bit packing of k-bit code indices: what a k-bit payload occupies when stored.

Why its own module: kscale keeps codes one per byte (or two per byte at k <= 4) for speed, but
``pack`` must give the bytes a format would store, and the ledger counts exactly ``k`` bits per
value; a 3-bit code stored in a byte would make the two disagree.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["pack_bits", "unpack_bits"]


def pack_bits(indices: torch.Tensor, bits: int) -> bytes:
    """``indices`` (integers in [0, 2^bits)) as a little-endian bit stream: value i occupies bits
    ``[i*bits, (i+1)*bits)``, least significant bit first; padded with zeros to a whole byte."""
    if not 1 <= bits <= 8:
        raise ValueError(f"pack_bits packs 1..8-bit codes; got bits={bits}")
    idx = indices.detach().reshape(-1).to(torch.int64).cpu().numpy()
    if idx.size and (idx.min() < 0 or idx.max() >= 2**bits):
        raise ValueError(f"code indices must lie in [0, {2**bits}) for {bits}-bit codes")
    planes = ((idx[:, None] >> np.arange(bits)) & 1).astype(np.uint8)  # [n, bits], LSB first
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` ``bits``-bit values as int64."""
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: n * bits]
    planes = flat.reshape(n, bits).astype(np.int64)
    return torch.from_numpy((planes << np.arange(bits)).sum(axis=1))
