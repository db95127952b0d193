"""Logging and progress helpers. The library logs; only the CLI configures handlers."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def track(items: Iterable[T], description: str, total: int | None = None, console: Any = None) -> Iterator[T]:
    """Iterate with a rich progress bar on a TTY (or on ``console``, a rich Console), silently otherwise."""
    if console is None and not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import Progress

    # 2 redraws a second, not rich's 10: the redraw thread's CPU time is taken from the work it shows
    with Progress(console=console, transient=True, refresh_per_second=2) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


@contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise one noisy third-party logger's threshold for the duration of a block."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)
