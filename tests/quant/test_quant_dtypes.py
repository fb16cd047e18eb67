"""Codebooks against published tables, formulas and bitsandbytes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kscale.quant import DTYPES, QuantSpec, codebook
from kscale.quant.dtypes import dynamic_codebook, float_codebook, int_codebook, nf_codebook, nf_offset

NF4 = [-1, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0,
       0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1]


def test_registry_names():
    assert DTYPES.names() == ["dynamic", "float", "int", "nf", "quantile"]


def test_nf4_table():
    np.testing.assert_almost_equal(nf_codebook(4).numpy(), np.array(NF4), decimal=7)
    assert nf_offset(4) == 0.9677083


def test_e2m1_float4():
    expected = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6]) / 6
    code = float_codebook(4, 2)
    assert torch.equal(code, torch.cat([-expected.flip(0)[:-1], expected]))
    assert torch.equal(codebook(QuantSpec(4, "float")), code)  # default E = ceil(4/2) = 2


def test_float_e4m3_by_enumeration():
    # 8-bit, E=4, M=3, bias 7, all exponent fields finite: max = 1.875 * 2^8 = 480
    code = float_codebook(8, 4).double()
    mags = {m / 8 * 2.0**-6 for m in range(8)} | {(1 + m / 8) * 2.0 ** (e - 7) for e in range(1, 16) for m in range(8)}
    ref = torch.tensor(sorted(mags), dtype=torch.float64) / 480
    assert torch.allclose(code[code >= 0], ref.float().double())
    assert len(code) == 255 and code.min() == -1


def test_int_levels():
    assert torch.equal(int_codebook(3) * 3, torch.tensor([-3.0, -2, -1, 0, 1, 2, 3]))
    eight = int_codebook(8)
    assert torch.allclose(eight * 127, torch.arange(-127, 128).float(), atol=1e-5)
    assert len(eight) == 255


def _dynamic_map_reference(max_exp=7, total_bits=8):
    """Independent re-implementation of REFERENCES.md §1.4's prose (signed create_dynamic_map)."""
    data = []
    non_sign = total_bits - 1
    for i in range(max_exp):
        n = 2 ** (i + non_sign - max_exp) + 1
        b = np.linspace(0.1, 1, n, dtype=np.float32)
        means = (b[:-1] + b[1:]) / 2
        data += list(10.0 ** (-(max_exp - 1) + i) * means) + list(-(10.0 ** (-(max_exp - 1) + i)) * means)
    return np.array(sorted(data + [0.0, 1.0]))


def test_dynamic8_matches_prose_reimplementation():
    code = dynamic_codebook(8)
    np.testing.assert_allclose(code.numpy(), _dynamic_map_reference(), rtol=1e-6, atol=1e-9)
    assert len(torch.unique(code)) == 256
    assert code[code > 0].min().item() == pytest.approx(5.5e-7, rel=1e-3)


@pytest.mark.slow  # importing bitsandbytes costs seconds
def test_dynamic8_matches_bitsandbytes():
    try:
        from bitsandbytes.functional import create_dynamic_map

        ref = create_dynamic_map(True, 7, 8)
    except Exception as err:  # pragma: no cover - the prose test above still covers it
        pytest.skip(f"bitsandbytes unusable here: {err}")
    np.testing.assert_allclose(dynamic_codebook(8).numpy(), ref.numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_codebook_sizes_and_range(bits):
    expected = {"int": 2**bits - 1, "float": 2**bits - 1, "dynamic": 2**bits, "nf": 2**bits}
    for name, n in expected.items():
        code = codebook(QuantSpec(bits, name))
        assert len(torch.unique(code)) == n == len(code), name
        assert torch.all(code[1:] > code[:-1]) and code.max() == 1 and code.min() >= -1
        assert (code == 0).sum() == 1


def test_nf_is_normal_quantiles_for_other_k():
    # nf3: positive half = ppf of 5 points from offset to 0.5, normalised by its largest value
    from statistics import NormalDist

    off = nf_offset(3)
    assert off == round(1 - 0.5 * (1 / 14 + 1 / 16), 7)
    pts = np.linspace(off, 0.5, 5)[:-1]
    pos = np.array([NormalDist().inv_cdf(p) for p in pts])
    code = nf_codebook(3).numpy()
    np.testing.assert_allclose(np.sort(code[code > 0]), np.sort(pos / pos.max()), atol=2e-6)


def test_quantile_codebook_of_uniform_grid():
    # the empirical quantiles of 0..N-1 are known exactly: code_i = mean of Q(i/17), Q((i+1)/17),
    # then divided by the largest |code| so the top code is exactly 1 (bitsandbytes' convention)
    spec = QuantSpec(4, "quantile", blocksize=None)
    n = 1701
    w = torch.arange(n, dtype=torch.float32).view(1, n)  # one row: scale = n-1
    code = codebook(spec, w).double()
    q = [i / 17 for i in range(18)]  # Q(p) of 0..n-1 is p*(n-1); normalised by n-1
    ref = torch.tensor([(q[i] + q[i + 1]) / 2 for i in range(16)], dtype=torch.float64)
    ref = ref / ref.abs().max()
    assert torch.allclose(code, ref.half().double(), atol=1e-3)
    assert torch.equal(code, code.half().double())  # stored at 16 bits
    assert code.max().item() == 1.0  # the block maximum is representable: never clipped
    with pytest.raises(ValueError, match="needs the tensor w"):
        codebook(spec)


def test_default_exponent_bits_rule():
    # App. C.4: ceil(bits/2) -> 2, 2, 3, 3, 4, 4 for 3..8
    assert [QuantSpec(b, "float").resolved_exponent_bits for b in range(3, 9)] == [2, 2, 3, 3, 4, 4]
    assert QuantSpec(8, "dynamic").resolved_exponent_bits == 7
    assert QuantSpec(4, "nf").resolved_exponent_bits is None
    # E2M0, bias 1: magnitudes {0, 1, 2, 4} / 4
    e2m0 = torch.tensor([0, 0.25, 0.5, 1.0])
    assert torch.equal(codebook(QuantSpec(3, "float")), torch.cat([-e2m0.flip(0)[:-1], e2m0]))
