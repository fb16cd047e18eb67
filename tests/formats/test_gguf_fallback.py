"""The per-tensor GGUF formats fall back exactly as the file-type recipes do (one rule, current
llama.cpp ``tensor_type_fallback``): q2_k/q3_k -> q4_0 (older llama.cpp used iq4_nl)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("kscale.quant.gguf")

from kscale.quant import FORMATS, fake_quantize  # noqa: E402
from kscale.quant.formats.gguf import stored_type  # noqa: E402
from kscale.quant.gguf import GGUF_TYPES, fake_quantize_gguf  # noqa: E402
from kscale.quant.gguf.recipes import tensor_type_fallback  # noqa: E402


@pytest.mark.parametrize("n_per_row", [64, 96, 192, 800, 48, 256])
def test_format_and_recipes_share_one_fallback(n_per_row):
    for name in GGUF_TYPES:
        assert stored_type(name, n_per_row) == tensor_type_fallback(name, n_per_row)


def test_low_k_quants_fall_back_to_q4_0_not_iq4_nl():
    assert stored_type("q2_k", 96) == "q4_0"
    assert stored_type("q3_k", 800) == "q4_0"
    assert stored_type("iq4_xs", 96) == "iq4_nl"  # llama.cpp keeps iq4_nl for the iq types
    # the stored bytes and the ledger follow: q4_0 is 18 bytes per 32 values (4.5 bits/param)
    fmt = FORMATS.get("q3_k")
    cost = fmt.tensor_cost((5, 96), fmt.configure())
    assert cost.payload_bits + cost.constant_bits + cost.other_bits == 5 * 3 * 18 * 8
    w = torch.randn(5, 96, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fake_quantize(w, "q3_k"), fake_quantize_gguf(w, "q4_0"))
    assert len(fmt.pack(w, fmt.configure())) == 5 * 3 * 18
