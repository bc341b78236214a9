"""What `cellpipe run` shows while a run goes: one event sink, four audiences.

A person at a terminal gets a live table (rich); a CI log gets one plain line per event, since
cursor tricks turn into garbage there; `--quiet` gets only the final summary line and errors;
`--json-events` gets one JSON object per event on stdout for scripts, and nothing else there.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Sequence
from typing import IO, Literal

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from converter.events import Event, RunView

Mode = Literal["live", "plain", "quiet", "json"]
ERROR_TAIL_LINES = 20
_STYLES = {
    "succeeded": "green",
    "cached": "cyan",
    "failed": "bold red",
    "running": "yellow",
    "queued": "dim",
    "pending": "dim",
    "skipped": "magenta",
    "cancelled": "magenta",
}


def choose_mode(quiet: bool, json_events: bool, stdout: IO[str]) -> Mode:
    """JSON wins over quiet (a script asked for a format); a live table only on a terminal."""
    if json_events:
        return "json"
    if quiet:
        return "quiet"
    return "live" if stdout.isatty() else "plain"


class Progress:
    """An EventSink (call it with each event); `close()` ends the live view and prints the summary.

    Engines emit from several threads, so every update takes a lock.
    """

    def __init__(self, mode: Mode, steps: Sequence[str] = (), *, stdout: IO[str], stderr: IO[str]) -> None:
        self.mode = mode
        self.stdout, self.stderr = stdout, stderr
        self.view = RunView(steps, log_lines=ERROR_TAIL_LINES)
        self._start = time.time()
        self._lock = threading.Lock()
        self._console = Console(file=stdout, highlight=False, soft_wrap=False)
        self._errors = Console(file=stderr, highlight=False, soft_wrap=True)
        self._live: Live | None = None
        self.stdout_closed = False
        if mode == "live":
            self._live = Live(self, console=self._console, refresh_per_second=4, transient=True)
            self._live.start()

    # -- the sink -------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        with self._lock:
            self.view.apply(event)
            if event.type == "run_started":
                self._start = event.time
            if self.mode == "json":
                self._out(json.dumps(event.to_json(), sort_keys=True) + "\n")
            elif self.mode == "plain":
                line = self._plain_line(event)
                if line is not None:
                    self._out(line + "\n")

    def _out(self, text: str) -> None:
        """Write to stdout unless its reader has gone (`| head -3`): that is the reader's choice,
        not a failure of the run, which goes on; nothing more is written there."""
        if self.stdout_closed:
            return
        try:
            self.stdout.write(text)
            self.stdout.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the file object itself was closed
            self._stdout_gone()

    def _stdout_gone(self) -> None:
        self.stdout_closed = True
        if self._live is not None:
            self._live.console.quiet = True
        self._console.quiet = True
        with contextlib.suppress(OSError, ValueError):
            # what is still buffered (and the interpreter's flush at exit) goes nowhere, quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stdout.fileno())
            os.close(devnull)

    def close(self) -> None:
        """Stop the live view; print the final table (humans) and the summary (all but JSON)."""
        live, self._live = self._live, None
        try:
            if live is not None:
                live.stop()  # outside the lock: its refresh thread takes the lock to render
            with self._lock:
                if self.mode == "json" or self.view.started is None:
                    return  # JSON: events only; no run_started: the engine refused the run and says why
                if self.mode in ("live", "plain"):
                    self._console.print(self._table(final=True))
                self._print_failures()
                summary = self.summary()
                if self.mode == "quiet" and self.view.state != "succeeded":
                    self._errors.print(summary)
                else:
                    self._console.print(summary, soft_wrap=True)
        except BrokenPipeError:
            self._stdout_gone()

    def __rich__(self) -> Table:
        """Rendered by rich on every refresh, so running steps' durations tick."""
        with self._lock:
            return self._table(final=False)

    # -- rendering ---------------------------------------------------------------------
    def _plain_line(self, event: Event) -> str | None:
        """One line a CI log reader can grep; None for events that say nothing new."""
        at = f"[{max(event.time - self._start, 0.0):7.1f}s]"
        step = event.step or ""
        if event.type == "run_started":
            return f"{at} run {event.run_id} started: {self.view.pipeline} ({len(self.view.steps)} steps)"
        if event.type == "step_log":
            return f"{at} {step} | {event.line}" if event.line is not None else None
        if event.type == "metrics":
            values = " ".join(f"{k}={_number(v)}" for k, v in sorted((event.metrics or {}).items()))
            return f"{at} metrics{' from ' + step if step else ''}: {values}"
        if event.type == "run_finished":
            return None  # the summary line says it
        words = {
            "step_queued": "queued",
            "step_started": f"started (attempt {event.attempt})" if (event.attempt or 1) > 1 else "started",
            "step_retrying": f"failed attempt {event.attempt}",
            "step_succeeded": "succeeded",
            "step_failed": "FAILED",
            "step_cached": "cached",
            "step_skipped": "skipped",
        }
        text = f"{at} {step} {words.get(event.type, event.type)}"
        if event.duration is not None:
            text += f" in {event.duration:.1f}s"
        if event.message and event.type in ("step_failed", "step_retrying", "step_skipped"):
            text += f": {event.message}"
        delay = (event.data or {}).get("delay")
        if event.type == "step_retrying":  # the wait before the next attempt, not the attempt's time
            text += f"; retrying in {delay:g}s" if isinstance(delay, int | float) else "; retrying"
        return text

    def _table(self, final: bool) -> Table:
        now = time.time()
        run = self.view
        title = f"{run.pipeline} · run {run.run_id}" if run.started is not None else run.pipeline
        table = Table(title=title or None, title_justify="left", expand=False)
        # The short columns never shrink; a long message wraps (final table) or is cut (live view)
        # rather than squeezing them to nothing on a narrow or non-terminal output.
        table.add_column("step", no_wrap=True, min_width=4)
        table.add_column("state", no_wrap=True, min_width=9)
        table.add_column("attempt", justify="right", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True, min_width=6)
        if final:
            table.add_column("message", overflow="fold", ratio=1)
        else:
            table.add_column("last log line", overflow="ellipsis", no_wrap=True, max_width=80)
        for name, view in run.steps.items():
            seconds = view.seconds(now)
            table.add_row(
                name,
                Text(view.state, style=_STYLES.get(view.state, "")),
                str(view.attempt) if view.attempt is not None else "",
                f"{seconds:.1f}s" if seconds is not None else "",
                Text((view.message or "") if final else (view.log[-1] if view.log else "")),
            )
        return table

    def _print_failures(self) -> None:
        """Each failed step's message and log tail on stderr: the first thing a user needs."""
        for name, view in self.view.steps.items():
            if view.state != "failed":
                continue
            self._errors.print(Text(f"step {name} failed: {view.message or 'no message'}", style="bold red"))
            if self.mode == "quiet":  # the other modes already showed the log lines
                for line in view.log:
                    self._errors.print(Text(f"  {name} | {line}"))

    def summary(self) -> str:
        """One line: the run's outcome, step counts, time and metrics."""
        run = self.view
        parts = ", ".join(f"{n} {state}" for state, n in sorted(run.counts().items()))
        took = run.duration if run.duration is not None else time.time() - self._start
        state = run.state if run.ended else "ended"
        text = f"run {run.run_id} {state}: {len(run.steps)} steps ({parts}) in {took:.1f}s"
        if run.metrics:
            text += "; " + " ".join(f"{k}={_number(v)}" for k, v in sorted(run.metrics.items()))
        if run.message and run.state != "succeeded" and run.message != run.state:
            text += f" ({run.message})"
        return text


def _number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
