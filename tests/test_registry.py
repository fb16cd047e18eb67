"""The registry is how config names become objects: unknown names must fail loudly and helpfully."""
from __future__ import annotations

import pytest

from kscale.registry import Registry, UnknownNameError


def test_register_get_and_names_sorted():
    reg: Registry[int] = Registry("widget")
    reg.register("b", 2)

    @reg.register("a")
    def _a():
        return 1

    assert reg.get("b") == 2
    assert reg.get("a")() == 1
    assert reg.names() == ["a", "b"]
    assert "a" in reg and "c" not in reg and len(reg) == 2


def test_unknown_name_suggests_closest_and_lists_all():
    reg: Registry[int] = Registry("dtype")
    for name in ("int", "float", "quantile", "dynamic", "nf"):
        reg.register(name, 0)
    with pytest.raises(UnknownNameError) as err:
        reg.get("flaot")
    msg = str(err.value)
    assert "unknown dtype 'flaot'" in msg
    assert "Did you mean 'float'?" in msg
    assert "Available: dynamic, float, int, nf, quantile" in msg
    # both a KeyError and a ValueError, so validation code can catch either
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)


def test_duplicate_registration_is_refused_unless_overwrite():
    reg: Registry[int] = Registry("law")
    reg.register("power", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("power", 2)
    reg.register("power", 3, overwrite=True)
    assert reg.get("power") == 3
