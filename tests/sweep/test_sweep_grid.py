"""The in-job grid: baseline once, seeds only where they matter, validation errors name values."""
from __future__ import annotations

import pytest

from kscale.quant.spec import QuantSpec
from kscale.sweep.grid import CellSpec, expand_cells


def _cells(**axes):
    return expand_cells(axes, quant_spec_factory=QuantSpec)


def test_baseline_runs_once_first_and_grid_order():
    cells = _cells(bits=[3, 4, 16], dtype=["int", "float"], blocksize=[64, 128])
    assert len(cells) == 1 + 2 * 2 * 2  # 16-bit collapses over dtype and blocksize
    assert cells[0].is_baseline and cells[0].method == "none" and cells[0].quant.bits == 16
    assert sum(c.is_baseline for c in cells) == 1
    # grid order: method, dtype, bits, blocksize (outermost first)
    assert [(c.quant.dtype, c.quant.bits, c.quant.blocksize) for c in cells[1:4]] == [
        ("int", 3, 64), ("int", 3, 128), ("int", 4, 64)]
    assert len({c.label for c in cells}) == len(cells)


def test_seed_axis_collapses_for_deterministic_methods():
    cells = expand_cells(
        {"method": ["rtn", "gptq"], "bits": 4, "seed": [0, 1, 2]},
        method_options={"gptq": {"damp": 0.01}}, quant_spec_factory=QuantSpec)
    rtn = [c for c in cells if c.method == "rtn"]
    gptq = [c for c in cells if c.method == "gptq"]
    assert len(rtn) == 1 and rtn[0].seed == 0
    assert sorted(c.seed for c in gptq) == [0, 1, 2]
    assert gptq[0].options_dict == {"damp": 0.01} and rtn[0].options_dict == {}
    ident = gptq[1].identity()
    assert ident["method"] == "gptq" and ident["seed"] == 1 and ident["bits"] == 4
    assert ident["method_options"] == '{"damp":0.01}'


def test_identity_comes_from_quant_spec_to_row():
    (cell,) = _cells(bits=3, dtype="float", blocksize=None)
    ident = cell.identity()
    assert ident["exponent_bits"] == 2  # float3 default: ceil(3/2), resolved by QuantSpec
    assert ident["blocksize"] is None and ident["dtype"] == "float"
    assert isinstance(cell, CellSpec) and hash(cell)  # frozen, hashable


@pytest.mark.parametrize("axes, needle", [
    ({"bits": [4, 17]}, "bits"),
    ({"bits": 4, "dtype": "fp"}, "dtype"),
    ({"bits": 4, "blocksize": -1}, "blocksize"),
    ({"bits": 4, "colour": 1}, "unknown grid axes"),
    ({"bits": []}, "empty"),
])
def test_invalid_points_raise_value_error(axes, needle):
    with pytest.raises(ValueError, match=needle):
        _cells(**axes)
