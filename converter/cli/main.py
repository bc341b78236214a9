"""The `cellpipe` command line: one table of commands. User mistakes print one clear message and exit 2.

Each command module (pipeline, kfp, run, serve, tune) lists its commands in `COMMANDS` and imports only
`converter.cli.common`; this module assembles the table, builds the parser from it and maps errors to exit
codes. Nothing imports this module but the entry points (`cellpipe`, `python -m converter.cli`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from converter import __version__
from converter.cli import kfp, pipeline, run, serve, tune
from converter.cli.common import EXIT_CANCELLED, EXIT_INVALID, Command, print_problems
from converter.errors import CellpipeError, InvalidNotebook

COMMANDS: tuple[Command, ...] = (
    *pipeline.COMMANDS,
    *kfp.COMMANDS,
    *run.COMMANDS,
    *serve.COMMANDS,
    *tune.COMMANDS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellpipe",
        description="Tagged Jupyter notebooks as Kubeflow Pipelines: validate, compile, graph and run them.",
    )
    parser.add_argument("--version", action="version", version=f"cellpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = next(c.handler for c in COMMANDS if c.name == args.command)
    try:
        return handler(args)
    except InvalidNotebook as exc:
        print_problems(exc.problems)
        errors = sum(1 for p in exc.problems if p.severity == "error")
        print(f"{getattr(args, 'notebook', '')}: invalid ({errors} error(s))", file=sys.stderr)
        return EXIT_INVALID
    except CellpipeError as exc:
        print(f"cellpipe: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("cellpipe: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
