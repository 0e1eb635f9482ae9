"""Names for things a user picks by name (models, data sets, EDT schedules, recipes): one lookup, one error.

>>> SCHEDULES = Registry("schedule")
>>> @SCHEDULES.register("cosine")
... def cosine(epochs=200, **kw): ...
>>> SCHEDULES.get("cosin")
ConfigError: unknown schedule 'cosin'; known: constant, cosine, ...; did you mean 'cosine'?
"""

from __future__ import annotations

import difflib
from typing import Dict, Generic, Optional, TypeVar

from .errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table of one ``kind`` ("model", "schedule", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, T] = {}
        self._locked: set = set()

    def register(self, name: str, entry: Optional[T] = None, *, locked: bool = False):
        """Add ``entry`` under ``name``; without ``entry``, a decorator that adds what it decorates.
        A ``locked`` name cannot be replaced later (the shipped presets keep their meaning)."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a {self.kind} name is a non-empty string, got {name!r}.")
        if name in self._locked:
            raise ConfigError(f"{name!r} is a shipped {self.kind} and cannot be replaced; register yours under "
                              "another name.")

        def add(obj: T) -> T:
            self._entries[name] = obj
            if locked:
                self._locked.add(name)
            return obj

        return add if entry is None else add(entry)

    def get(self, name: str, role: Optional[str] = None) -> T:
        """The entry called ``name``, or a ConfigError naming the known ones and the closest match;
        ``role`` words the error for where the name was given ("student model", "EDT schedule")."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        what, known = role or self.kind, ", ".join(self.names())
        if not isinstance(name, str):
            raise ConfigError(f"a {what} name is a string, got {type(name).__name__} {str(name)[:40]!r}; known: {known}.")
        close = difflib.get_close_matches(name, self.names(), n=1)
        raise ConfigError(f"unknown {what} {name!r}; known: {known}" + (f"; did you mean {close[0]!r}?" if close else "."))

    def names(self) -> list:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries
