"""What every command shares: consoles, the --debug flag, progress bars, quiet library logs."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


@dataclass
class _State:
    debug: bool = False


state = _State()


def quiet_libraries() -> None:
    """Keep diffusers / transformers chatter (progress bars, notices) out of the command's output."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logger = logging.getLogger("synfer")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
        logger.setLevel(logging.INFO if state.debug else logging.WARNING)
        logger.propagate = False


class _ConsoleHandler(logging.Handler):
    """synfer's own log records as short lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        style = "yellow" if record.levelno >= logging.WARNING else "dim"
        err_console.print(f"[{style}]{level}:[/] {record.getMessage()}", highlight=False)


class RateColumn(ProgressColumn):
    """Items per second, from rich's own speed estimate."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else f"-- {self.unit}/s", style="progress.data.speed")


class MetricsColumn(ProgressColumn):
    """The numbers a training loop last reported (loss, learning rate), e.g. ``loss 0.1234 lr 1e-04``."""

    def render(self, task) -> Text:
        return Text(task.fields.get("metrics", ""), style="progress.data.speed")


def format_metrics(values: dict) -> str:
    return " ".join(f"{name} {value:.4f}" if name == "loss" else f"{name} {value:.3g}" for name, value in values.items())


class RichReporter:
    """Reports a library stage on the terminal: log lines and progress bars on stderr (see ``synfer.progress``).

    Bars counted in steps (training loops) also show what the loop reports through :meth:`show_metrics`.
    """

    _bar = None  # the open bar's advance, while a loop counted in steps runs

    def log(self, message: str) -> None:
        err_console.print(message, highlight=False, soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int, completed: int = 0, unit: str = "img", show: bool = True):
        if not show:
            yield lambda k=1: None
            return
        with progress_bar(description, total=total, unit=unit, completed=completed, metrics=unit == "step") as advance:
            self._bar = advance
            try:
                yield advance
            finally:
                self._bar = None

    def show_metrics(self, **values: float) -> None:
        """A training loop's latest numbers (``loss=..., lr=...``), shown on its bar."""
        if self._bar is not None:
            self._bar.show(**values)


class _Advance:
    """``advance(k)`` for one task of a rich Progress; ``show(**values)`` sets its metrics column."""

    def __init__(self, progress: Progress, task):
        self.progress = progress
        self.task = task

    def __call__(self, k: int = 1) -> None:
        self.progress.advance(self.task, k)

    def show(self, **values: float) -> None:
        self.progress.update(self.task, metrics=format_metrics(values))


@contextmanager
def progress_bar(description: str, total: int, unit: str = "img", completed: int = 0, metrics: bool = False):
    """A rich progress bar with count, rate and ETA on stderr; yields ``advance(k)``.

    ``completed`` is work already done (a resume), counted without distorting the rate. ``metrics``
    adds a column for what ``advance.show(loss=...)`` reports.
    """
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *((MetricsColumn(),) if metrics else ()),
        TaskProgressColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, metrics="")
        yield _Advance(progress, task)
