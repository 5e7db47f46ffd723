"""A name -> entry table, filled at import time by decorators: the methods, the backbones and
the datasets are each one ``Registry`` (adding one is a new module with its decorator).

    METHODS = Registry("method")
    METHODS.add("ce", spec)          # refuses a name registered twice
    METHODS.get("ce")                # refuses an unknown name, listing the registered ones
    "ce" in METHODS, tuple(METHODS), METHODS["ce"]     # a read-only Mapping otherwise

Plain Python: ``ucmkd_jax.data`` uses it without importing JAX.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Dict, Generic, Iterator, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping, Generic[T]):
    """Entries by name, in registration order; ``kind`` names them in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:  # noqa: D102 (unlike Mapping.get: an unknown name is an error)
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
