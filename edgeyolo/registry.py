"""A small generic registry: register by decorator, look up by name, list with wildcards."""
from __future__ import annotations

import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from edgeyolo.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named collection of strategies (pruning methods, exporters, targets, runners)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            self.add(name, item)
            return item

        return decorator

    def add(self, name: str, item: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UsageError(f"unknown {self.kind} '{name}'; known: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def remove(self, name: str) -> T:
        """Take an entry out again (a plug-in unloaded, a test's dummy cleaned up)."""
        try:
            return self._items.pop(name)
        except KeyError:
            raise UsageError(f"unknown {self.kind} '{name}'") from None

    def in_order(self) -> list[tuple[str, T]]:
        """(name, item) in registration order, for registries whose order means something (build stages)."""
        return list(self._items.items())
