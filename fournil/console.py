"""Conventions shared by every verb: exit codes, logging to stderr, progress bars, data output on stdout.

Exit codes: 0 ok, 1 runtime failure (`FournilError`), 2 bad usage or input (`UsageError`, argparse).
Progress and logs go to stderr so that `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Container, Iterable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("fournil")
stderr = Console(stderr=True)
_quiet = False


class FournilError(Exception):
    """A runtime failure the user can act on; the CLI prints the message and exits 1."""

    exit_code = EXIT_FAILURE


class UsageError(FournilError):
    """Bad usage or bad input (a file, a recipe key, a flag); the CLI exits 2."""

    exit_code = EXIT_USAGE


def setup(quiet: bool = False, verbose: bool = False) -> None:
    """Route logs to stderr; `--quiet` keeps only warnings and hides progress bars."""
    global _quiet
    _quiet = quiet
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger("fournil")
    root.handlers.clear()
    handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def is_quiet() -> bool:
    return _quiet


def progress_bar(transient: bool = True) -> Progress:
    """A rich progress bar on stderr (disabled under `--quiet`) with count, rate and ETA."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=stderr,
                    transient=transient, disable=_quiet)


def track(items: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
    """Iterate with a progress bar; use for any loop that may take more than ~2 s."""
    with progress_bar() as bar:
        yield from bar.track(items, total=total, description=description)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner for a single long call that has no natural progress count (e.g. loading weights)."""
    if _quiet or not stderr.is_terminal:
        log.info(message)
        yield
        return
    with stderr.status(message):
        yield


def print_json(data: Any) -> None:
    """Data goes to stdout, one JSON document, so it can be piped to `jq`."""
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def print_table(title: str, rows: Iterable[Sequence[str]], header: Sequence[str] | None = None,
                right: Container[int] | None = None) -> None:
    """Human-readable output on stdout: key/value rows, or rows under `header` with the columns `right` (by
    default all but the first) right-aligned."""
    table = Table(title=title, show_header=header is not None, title_justify="left")
    for i, name in enumerate(header or ("", "")):
        table.add_column(name, justify="right" if (i > 0 if right is None else i in right) else "left",
                         style="" if header or i else "bold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
