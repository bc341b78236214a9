"""What every `cellpipe` command module shares: the command record, exit codes and common options.

Command modules import this module, never `converter.cli.main`; `main` imports the command modules and
assembles their `COMMANDS` lists into one table, so the command line has no import circle.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from converter.model import Problem

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 130

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One `cellpipe NAME` sub-command: help line, arguments, and the handler returning the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler


def print_problems(problems: Sequence[Problem]) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)


def add_parameter_options(parser: argparse.ArgumentParser, what: str) -> None:
    """`-p NAME VALUE` (typed as papermill types it) and `-f FILE`, alike on every command with parameters."""
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help=f"{what}, typed as papermill types it (repeatable)",
    )
    parser.add_argument(
        "-f",
        "--parameters-file",
        action="append",
        metavar="FILE",
        help="a YAML file of NAME: VALUE parameters (repeatable; -p wins)",
    )


def console() -> Console:
    """Full lines when piped (grep, CI logs): rich would otherwise fit tables into 80 columns."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)
