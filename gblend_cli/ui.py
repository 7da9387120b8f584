"""Terminal output. Results (tables, reports, summaries) go to stdout through `out`, so
`gblend report > t.txt`, `| less` and `$(gblend ...)` get them; progress bars, logs, warnings and
errors go to stderr through `console`. Neither writes colour codes when its stream is not a
terminal (or NO_COLOR is set), and a pipe or log file gets wide lines instead of 80 columns."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Column
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


_status = None


def start_loading(message: str) -> None:
    """A spinner on a terminal while torch and the data load (no blank screen); nothing in a pipe
    or log, where a one-line error must stay the only line. Ends when progress bars start."""
    global _status
    if console.is_terminal and _status is None:
        _status = console.status(message)
        _status.start()


def stop_loading() -> None:
    global _status
    if _status is not None:
        _status.stop()
        _status = None


def progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}", table_column=Column(width=38, no_wrap=True, overflow="ellipsis")),
        BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=transient,
    )


class RunProgress:
    """The bars of one training run on stderr: the whole run (its ETA counts every training and
    estimation step still to come), the epoch or estimation epoch in progress, and the evaluation
    pass in progress. Disabled (ranks > 0), every call does nothing."""

    def __init__(self, enabled: bool, name: str, total_steps: int):
        self.enabled = enabled
        self.bar = progress() if enabled else None
        self.name, self.total = name, total_steps
        self._now_done = 0

    def __enter__(self) -> "RunProgress":
        stop_loading()
        if self.enabled:
            self.bar.__enter__()
            self.run = self.bar.add_task(f"{self.name} (whole run)", total=self.total, info="")
            self.now = self.bar.add_task("", total=1, info="")
            self.eval = self.bar.add_task("evaluation", total=1, info="", visible=False)
        return self

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            self.bar.__exit__(*exc)
        return False

    def phase(self, description: str, steps: int) -> None:
        """A new epoch (or estimation epoch) of `steps` steps starts."""
        if self.enabled:
            self._now_done = 0
            self.bar.reset(self.now, total=steps, description=description, info="")

    def step(self, step: int, info: str) -> None:
        """Step `step` (0-based) of the phase is done (called every step on CPU, every 50 on CUDA)."""
        if self.enabled:
            self.bar.update(self.run, advance=step + 1 - self._now_done)
            self._now_done = step + 1
            self.bar.update(self.now, completed=step + 1, info=info)

    def evaluating(self, description: str, clips: int):
        """Show an evaluation pass of `clips` clips; returns the per-batch callback (clips done)."""
        if not self.enabled:
            return None
        self.bar.reset(self.eval, total=clips, description=description, visible=True)
        return lambda n: self.bar.update(self.eval, advance=n)

    def done_evaluating(self) -> None:
        if self.enabled:
            self.bar.update(self.eval, visible=False)

    def log(self, message: str) -> None:
        """A line above the bars."""
        if self.enabled:
            self.bar.console.print(message, soft_wrap=True, markup=False)
