"""The `cellpipe` command line. User mistakes print one clear message and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from converter import __version__
from converter.errors import CellpipeError, InvalidNotebook
from converter.model import Problem

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 130

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def _print_problems(problems: Sequence[Problem]) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)


@command("validate")
def _validate(args: argparse.Namespace) -> int:
    from converter.notebook.reader import check_notebook

    pipeline, problems = check_notebook(args.notebook)
    valid = pipeline is not None
    if args.json:
        report = {
            "notebook": args.notebook,
            "valid": valid,
            "problems": [p.to_json() for p in problems],
            "steps": [s.name for s in pipeline.steps] if pipeline else [],
        }
        print(json.dumps(report, indent=2))
    else:
        _print_problems(problems)
        if pipeline is not None:
            errors = "no errors" + (f", {len(problems)} warning(s)" if problems else "")
            print(f"{args.notebook}: valid, {len(pipeline.steps)} step(s), {errors}")
    return EXIT_OK if valid else EXIT_INVALID


@command("compile")
def _compile(args: argparse.Namespace) -> int:
    from converter.kfp.compile import compile_pipeline, stale_files, write_atomically
    from converter.notebook.reader import read_notebook

    pipeline = read_notebook(args.notebook)
    if not args.quiet:
        _print_problems(pipeline.warnings)
    compiled = compile_pipeline(pipeline)
    files = compiled.files()
    if args.build_context:
        from converter.kfp.build_context import build_context

        files.update(build_context(pipeline))
    out = Path(args.output)
    if args.check:
        stale = stale_files(out, files)
        for name in stale:
            print(
                f"{out / name}: out of date (run cellpipe compile {args.notebook} -o {out})", file=sys.stderr
            )
        return EXIT_FAILED if stale else EXIT_OK
    for path in write_atomically(out, files):
        if not args.quiet:
            print(path)
    return EXIT_OK


@command("graph")
def _graph(args: argparse.Namespace) -> int:
    from converter.notebook.reader import read_notebook
    from converter.reports import graph

    pipeline = read_notebook(args.notebook)
    data: str | bytes
    if args.format == "text":
        data = graph.render_text(pipeline)
    elif args.format == "json":
        data = json.dumps(graph.to_json(pipeline), indent=2) + "\n"
    elif args.format == "dot":
        data = graph.to_dot(pipeline)
    else:
        data = graph.render_image(pipeline, args.format)
    if args.output:
        from converter.kfp.compile import write_atomically

        target = Path(args.output)
        write_atomically(target.parent, {target.name: data})
    elif isinstance(data, bytes):
        if sys.stdout.isatty():
            raise CellpipeError(f"--format {args.format} writes binary data: give -o FILE")
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data if data.endswith("\n") else data + "\n")
    return EXIT_OK


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellpipe",
        description="Tagged Jupyter notebooks as Kubeflow Pipelines: validate, compile, graph and run them.",
    )
    parser.add_argument("--version", action="version", version=f"cellpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="list every problem of a notebook")
    p.add_argument("notebook")
    p.add_argument("--json", action="store_true", help="machine-readable report")

    p = sub.add_parser("compile", help="compile to KFP IR YAML and readable KFP DSL")
    p.add_argument("notebook")
    p.add_argument("-o", "--output", default=".", help="output folder (default: current folder)")
    p.add_argument("--build-context", action="store_true", help="also a Dockerfile + requirements per image")
    p.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the folder is out of date"
    )
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser("graph", help="show the pipeline's DAG")
    p.add_argument("notebook")
    p.add_argument("--format", choices=["text", "json", "dot", "svg", "png"], default="text")
    p.add_argument("-o", "--output", help="write to FILE instead of standard output")

    from converter.cli import run, serve, tune  # noqa: F401  (register run, runs, serve, tune)

    for register in _EXTRA_PARSERS:
        register(sub)
    return parser


# Commands defined in other modules (run, runs, schedule) add their sub-parsers here.
_EXTRA_PARSERS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except InvalidNotebook as exc:
        _print_problems(exc.problems)
        errors = sum(1 for p in exc.problems if p.severity == "error")
        print(f"{getattr(args, 'notebook', '')}: invalid ({errors} error(s))", file=sys.stderr)
        return EXIT_INVALID
    except CellpipeError as exc:
        print(f"cellpipe: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("cellpipe: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
