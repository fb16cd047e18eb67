"""Name -> object registries with helpful errors.

Config option names, result-row values and registry keys are the same strings
(`dtype: nf`, `method: gptq`, `protocol: gptq`), so a registry is the single
place that says what exists. Unknown names raise ``KeyError`` listing what is
available and suggesting the closest match, because a typo in a sweep config
should cost seconds, not a cluster allocation.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return `` Did you mean 'x'?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name. Both a KeyError and a ValueError, so callers
    validating user input can catch either."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A small name -> object mapping filled by a decorator.

    >>> LAWS = Registry("law")
    >>> @LAWS.register("power")
    ... def power(): ...
    >>> LAWS.get("powr")
    Traceback (most recent call last):
    ...
    kscale.registry.UnknownNameError: unknown law 'powr'. Did you mean 'power'? Available: power
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; usable as ``@REG.register("name")``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings; got {name!r}")

        def _add(item: T) -> T:
            if name in self._items and not overwrite:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it"
                )
            self._items[name] = item
            return item

        if obj is not None:
            return _add(obj)
        return _add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            names = self.names()
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(str(name), names)} "
                f"Available: {', '.join(names)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
