"""How long-running stages report to whoever runs them: a few log lines and progress bars.

Library functions take a :class:`Reporter`; the command line passes one that draws rich progress
bars on stderr, tests and benchmarks pass their own (or none: :class:`SilentReporter`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class Reporter(Protocol):
    def log(self, message: str) -> None:
        """One line for the person running the stage (a choice made for them, a resume, a warning)."""

    def progress(
        self, description: str, total: int, completed: int = 0, unit: str = "img", show: bool = True
    ) -> AbstractContextManager[Callable[[int], None]]:
        """A context for one long loop; it yields ``advance(k)``, called after each ``k`` items.

        ``completed`` items were done before (a resume); ``show=False`` asks for no display (another
        process on the same machine already shows one).
        """


class SilentReporter:
    """Reports nothing."""

    def log(self, message: str) -> None:
        pass

    @contextmanager
    def progress(
        self, description: str, total: int, completed: int = 0, unit: str = "img", show: bool = True
    ) -> Iterator[Callable[[int], None]]:
        yield lambda k=1: None
