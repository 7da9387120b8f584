"""Terminal output: one rich console on stderr (stdout stays clean for --format json) and one
progress-bar style for every long command."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

# a log file or pipe gets wide lines instead of rich's 80-column default
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=transient,
    )
