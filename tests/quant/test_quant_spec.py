"""Every bad QuantSpec fails at construction with a message naming rule, value and choices."""
from __future__ import annotations

import pytest

from kscale.quant import QuantSpec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 17}, "bits must be an integer in 2..8, or 16 for the unquantized baseline; got 17"),
        ({"bits": 1}, "got 1"),
        ({"bits": 4.0}, "got 4.0"),
        ({"bits": True}, "got True"),
        ({"bits": 4, "dtype": "flaot"}, "unknown dtype 'flaot'. Did you mean 'float'\? Available: dynamic, float, int, nf, quantile"),
        ({"bits": 4, "blocksize": 0}, "blocksize must be an integer >= 2 .* or None for one constant per output row; got 0"),
        ({"bits": 4, "blocksize": 64.5}, "got 64.5"),
        ({"bits": 4, "dtype": "int", "exponent_bits": 2}, "exponent_bits only applies to dtypes dynamic, float; got exponent_bits=2 with dtype='int'"),
        ({"bits": 4, "dtype": "float", "exponent_bits": 4}, r"exponent_bits must be an integer in 1..3 for a 4-bit float .*got 4"),
        ({"bits": 4, "dtype": "float", "exponent_bits": 0}, "got 0"),
        ({"bits": 4, "centered": "yes"}, "centered must be True or False; got 'yes'"),
        ({"bits": 4, "scale_bits": 8}, r"scale_bits must be 16 \(fp16 .*\) or 32 \(fp32, .*\); got 8"),
        ({"bits": 4, "outlier_frac": 0.5}, "outlier_frac must be a number with 0 <= outlier_frac < 0.5 .*got 0.5"),
        ({"bits": 4, "outlier_frac": -0.01}, "got -0.01"),
    ],
)
def test_bad_spec_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**kwargs)


def test_spec_properties():
    s = QuantSpec(4, "nf")
    assert s.label == "nf4-b64" and not s.is_baseline
    assert QuantSpec(3, "float", blocksize=128, centered=True).label == "float3-e2-b128-c"
    assert QuantSpec(8, "int", blocksize=None, scale_bits=32).label == "int8-row-s32"
    assert QuantSpec(16).is_baseline and QuantSpec(16).label == "fp16"
    assert QuantSpec(5, "float").to_row() == {
        "dtype": "float", "bits": 5, "blocksize": 64, "centered": False, "exponent_bits": 3,
        "scale_bits": 16, "outlier_frac": 0.0,
    }
    with pytest.raises(AttributeError):
        s.bits = 3  # frozen
    assert hash(s) == hash(QuantSpec(4, "nf"))
