"""`cellpipe validate`, `compile` and `graph`: the notebook read as a pipeline, without running it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from converter.cli.common import EXIT_FAILED, EXIT_INVALID, EXIT_OK, Command, print_problems
from converter.errors import CellpipeError


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
        print_problems(problems)
        if pipeline is not None:
            errors = "no errors" + (f", {len(problems)} warning(s)" if problems else "")
            print(f"{args.notebook}: valid, {len(pipeline.steps)} step(s), {errors}")
    return EXIT_OK if valid else EXIT_INVALID


def _compile(args: argparse.Namespace) -> int:
    from converter.kfp.compile import compile_pipeline, stale_files, write_atomically
    from converter.notebook.reader import read_notebook
    from converter.outputs import check_folder_target

    pipeline = read_notebook(args.notebook)
    if not args.check:
        check_folder_target(Path(args.output), "-o")
    if not args.quiet:
        print_problems(pipeline.warnings)
    compiled = compile_pipeline(pipeline)
    size, too_big = compiled.size_report(len(pipeline.steps))
    for warning in too_big:  # even with -q: the run would fail to start on the cluster
        print(f"{compiled.name}.yaml: warning: {warning}", file=sys.stderr)
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
    if not args.quiet:
        print(size, file=sys.stderr)  # stdout lists the files written, one per line, for scripts
    return EXIT_OK


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


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook")
    p.add_argument("--json", action="store_true", help="machine-readable report")


def _compile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook")
    p.add_argument("-o", "--output", default=".", help="output folder (default: current folder)")
    p.add_argument("--build-context", action="store_true", help="also a Dockerfile + requirements per image")
    p.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the folder is out of date"
    )
    p.add_argument("-q", "--quiet", action="store_true")


def _graph_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook")
    p.add_argument("--format", choices=["text", "json", "dot", "svg", "png"], default="text")
    p.add_argument("-o", "--output", help="write to FILE instead of standard output")


COMMANDS = [
    Command("validate", "list every problem of a notebook", _validate_arguments, _validate),
    Command("compile", "compile to KFP IR YAML and readable KFP DSL", _compile_arguments, _compile),
    Command("graph", "show the pipeline's DAG", _graph_arguments, _graph),
]
