"""Name -> object registries with helpful errors.

Config option names, result-row values and registry keys are the same strings
(`dtype: nf`, `method: gptq`, `protocol: gptq`), so a registry is the single
place that says what exists. Unknown names raise ``KeyError`` listing what is
available and suggesting the closest match, because a typo in a sweep config
should cost seconds, not a cluster allocation.
"""
from __future__ import annotations

import difflib
import importlib
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


#: Packages that register extra names (the ``toy`` family, its checkpoint provider and its
#: corpus) when imported. They sit above the registries they fill (``kscale.toy`` imports
#: ``kscale.models`` and ``kscale.data``), so they are imported by name, on the first lookup of a
#: name that is not registered yet: the one plug-in mechanism of kscale, with no import circle.
PLUGIN_MODULES: tuple[str, ...] = ("kscale.toy",)


def import_plugins() -> None:
    """Import :data:`PLUGIN_MODULES`; a plugin that is absent is skipped, any other error raises."""
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # only "the plugin itself is not there" is tolerated
            if exc.name != module:
                raise


class PluginRegistry(Registry[T]):
    """A :class:`Registry` that imports :data:`PLUGIN_MODULES` before reporting a name missing
    (or listing its names), so plug-in names resolve without their package being imported first."""

    def get(self, name: str) -> T:
        if name not in self._items:
            import_plugins()
        return super().get(name)

    def names(self) -> list[str]:
        import_plugins()
        return super().names()

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            import_plugins()
        return name in self._items
