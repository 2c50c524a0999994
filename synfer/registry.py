"""One ``Registry`` for every "name -> implementation" table in synfer.

Labeler kinds, ensemble policies, dataset layouts, backbones, AU sources, label distributions,
guidance normalisations, feature extractors and judges are each a ``Registry``: a new entry is one
``register`` call, never another branch in the code that uses it, and every lookup fails with the
same one-line message, ``unknown <what> 'y' (accepted: a, b, c)``.

Registries whose entries are heavy (torch models) register small factories that import on call,
so that listing the names (``--help``) loads nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from .errors import ConfigError

T = TypeVar("T")
_DECORATE = object()  # register(name) without an entry returns a decorator; None is a valid entry


class Registry(Generic[T]):
    """Named entries of one kind, in registration order.

    Args:
        what: what an entry is, in words ("labeler kind", "dataset layout"); it starts every error.
    """

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name, entry=_DECORATE):
        """Add ``entry`` under ``name``; without ``entry``, a decorator that adds what it decorates."""

        def add(item: T) -> T:
            if not name or not isinstance(name, str):
                raise ConfigError(f"a {self.what} needs a non-empty name, got {name!r}")
            if name in self._entries:
                raise ConfigError(f"{self.what} {name!r} is already registered")
            self._entries[name] = item
            return item

        return add if entry is _DECORATE else add(entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.what} {name!r} (accepted: {self.accepted()})") from None

    __getitem__ = get

    def check(self, name: str) -> str:
        """``name`` itself when registered; the one-line error otherwise."""
        self.get(name)
        return name

    def parse(self, spec: str) -> tuple[str, str]:
        """``"KIND:PATH"`` -> (kind, path), the kind checked: how models are named on the command line."""
        kind, sep, path = str(spec).partition(":")
        if not sep or not kind or not path:
            raise ConfigError(f"a {self.what} is given as KIND:PATH, got {spec!r} (kinds: {self.accepted()})")
        if kind not in self._entries:
            raise ConfigError(f"unknown {self.what} {kind!r} in {spec!r} (accepted: {self.accepted()})")
        return kind, path

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def accepted(self) -> str:
        """The names, comma-separated, for error messages."""
        return ", ".join(self._entries) or "none registered"

    def choices(self, last: str = "or") -> str:
        """The names as a phrase for help texts: ``a, b or c``."""
        names = list(self._entries)
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}" if names else ""

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {self.accepted()})"
