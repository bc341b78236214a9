"""`cellpipe run` and `cellpipe runs`: run a notebook as a pipeline, and look at the run store.

Parameters are given as papermill users give them (`-p NAME VALUE`, `-f params.yaml`), then checked
against the types the notebook's parameters cell declares, so a typo is a clear error before any
step starts rather than a wrong value deep inside a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table
from rich.text import Text

from converter.cli import kfp as cli_kfp
from converter.cli.common import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, Command, add_parameter_options
from converter.cli.common import console as _console
from converter.cli.kfp import engine_options
from converter.engines.base import RunRequest
from converter.engines.registry import get_engine
from converter.engines.runner import run_cancellable
from converter.errors import CellpipeError
from converter.events import Event
from converter.notebook.parameters import parameter_values
from converter.outputs import check_file_target
from converter.store.workspace import step_folders

if TYPE_CHECKING:
    from converter.store.runstore import RunRecord, RunStore

_STYLES = {
    "succeeded": "green",
    "cached": "cyan",
    "failed": "red",
    "running": "yellow",
    "cancelled": "magenta",
}
_EXIT_FOR_STATE = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}


# ---------------------------------------------------------------- cellpipe run


def _warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from converter.notebook.reader import load, read_notebook
    from converter.reports.progress import Progress, choose_mode

    notebook = Path(args.notebook)
    pipeline = read_notebook(notebook)
    parameters = parameter_values(
        pipeline, args.parameter or [], args.parameters_file or [], warn_unknown=_warning
    )
    if args.max_parallel is not None and args.max_parallel < 1:
        raise CellpipeError("--max-parallel must be at least 1")
    if args.engine == "kfp" and args.output:
        raise CellpipeError("-o needs the steps' cell outputs, which stay on the cluster with --engine kfp")
    if args.output:
        check_file_target(Path(args.output), "-o")
    if args.junit:
        check_file_target(Path(args.junit), "--junit")
    engine = get_engine(
        args.engine,
        max_parallel=args.max_parallel,
        fit_resources=args.fit_resources or None,
        **engine_options(args),
    )
    mode = choose_mode(args.quiet, args.json_events, sys.stdout)
    if not args.quiet:
        for warning in pipeline.warnings:
            print(warning, file=sys.stderr)

    request = RunRequest(
        pipeline=pipeline,
        notebook=notebook.resolve(),
        parameters=parameters,
        use_cache=True if args.cache else False if args.no_cache else None,
        resume=args.resume,
        max_parallel=args.max_parallel,
    )
    events: list[Event] = []
    progress = Progress(mode, [s.name for s in pipeline.steps], stdout=sys.stdout, stderr=sys.stderr)
    started = time.time()

    def say_cancelling() -> None:
        print("cellpipe: cancelling: stopping the running steps...", file=sys.stderr, flush=True)

    try:
        result = run_cancellable(engine, request, [events.append, progress], say_cancelling)
    finally:
        progress.close()
    finished = time.time()

    steps = [s.name for s in pipeline.steps]
    folders = step_folders(result.run_id, steps) if args.junit or args.output else {}
    if args.junit:
        from converter.reports import junit

        junit.write(junit.report(pipeline.name, steps, events, _log_tail_reader(folders)), Path(args.junit))
    if args.output:
        from converter.reports import executed_notebook

        first = next((e.time for e in events if e.type == "run_started"), started)
        nb = executed_notebook.build(
            load(notebook),
            pipeline,
            executed_notebook.read_step_outputs(folders),
            parameters=parameters,
            input_path=str(notebook),
            output_path=str(args.output),
            start_time=first,
            end_time=finished,
            failures=executed_notebook.failure_messages(events),
            reused={
                e.step: (e.data or {}).get("from_run") for e in events if e.type == "step_cached" and e.step
            },
        )
        executed_notebook.write(nb, Path(args.output))
    return _EXIT_FOR_STATE.get(result.state, EXIT_FAILED)


def _log_tail_reader(folders: Mapping[str, Path]) -> Callable[[str], list[str]]:
    def tail(step: str) -> list[str]:
        try:
            text = (folders[step] / "log.txt").read_text(encoding="utf-8", errors="replace")
        except (KeyError, OSError):
            return []
        from converter.reports.junit import LOG_TAIL_LINES

        return text.splitlines()[-LOG_TAIL_LINES:]

    return tail


# ---------------------------------------------------------------- cellpipe runs


@contextmanager
def _store() -> Iterator[RunStore]:
    from converter.store.runstore import RunStore
    from converter.store.workspace import Workspace

    store = RunStore(Workspace.default().database)
    try:
        yield store
    finally:
        store.close()


def _runs(args: argparse.Namespace) -> int:
    with _store() as store:
        engine = getattr(args, "engine", "local")  # `runs logs` has none: it reads the stored logs
        if engine == "kfp" and args.runs_command == "list":
            return cli_kfp.runs_list(store, args)
        if engine == "kfp" and args.runs_command == "show":
            return cli_kfp.runs_show(store, args)
        if args.runs_command == "list":
            return _runs_list(store, args)
        if args.runs_command == "show":
            return _runs_show(store, args)
        if args.runs_command == "logs":
            return _runs_logs(store, args)
        if engine == "kfp" or _remote_id(store, args.run):
            return cli_kfp.runs_cancel(store, args)
        run = store.get_run(args.run)
        if store.request_cancel(run.id):
            print(f"cancel requested for run {run.id}: its engine stops it within a second or so")
            return EXIT_OK
        print(f"cellpipe: run {run.id} is not running (it {run.state})", file=sys.stderr)
        return EXIT_FAILED


def _remote_id(store: RunStore, run: str) -> str | None:
    """The KFP run id of a local record of a cluster run (None for local runs and unknown ids)."""
    try:
        return store.get_run(run).remote_id
    except CellpipeError:
        return None


def _runs_list(store: RunStore, args: argparse.Namespace) -> int:
    runs = store.list_runs(args.limit)
    if args.json:
        print(json.dumps([_run_json(r, steps=False) for r in runs], indent=2))
        return EXIT_OK
    if not runs:
        print("no runs yet")
        return EXIT_OK
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("run", "pipeline", "state", "started", "time", "steps", "engine"):
        table.add_column(column, justify="right" if column == "time" else "left", no_wrap=column == "run")
    for run in runs:
        done = sum(1 for s in run.steps if s.state in ("succeeded", "cached"))
        table.add_row(
            run.id,
            run.pipeline,
            Text(run.state, style=_STYLES.get(run.state, "")),
            _when(run.created),
            _seconds(run.duration),
            f"{done}/{len(run.steps)}",
            run.engine,
        )
    _console().print(table)
    return EXIT_OK


def _runs_show(store: RunStore, args: argparse.Namespace) -> int:
    run = store.get_run(args.run)
    if args.json:
        print(json.dumps(_run_json(run, steps=True), indent=2))
        return EXIT_OK
    console = _console()
    console.print(f"run {run.id}: {run.pipeline} ({run.notebook}), {run.engine} engine", soft_wrap=True)
    state = run.state + (f": {run.message}" if run.message and run.message != run.state else "")
    started = _when(run.started or run.created)
    console.print(f"state: {state}; started {started}, took {_seconds(run.duration)}", soft_wrap=True)
    if run.parameters:
        values = ", ".join(f"{k}={v!r}" for k, v in run.parameters.items())
        console.print(f"parameters: {values}", soft_wrap=True)
    if run.resumed_from:
        console.print(f"resumed from: {run.resumed_from}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("step", "state", "attempt", "time", "message"):
        table.add_column(column, justify="right" if column in ("attempt", "time") else "left")
    for step in run.steps:
        message = step.message or (f"from run {step.cached_from}" if step.cached_from else "")
        table.add_row(
            step.name,
            Text(step.state, style=_STYLES.get(step.state, "")),
            str(step.attempt or ""),
            _seconds(step.duration),
            message,
        )
    console.print(table)
    if run.metrics:
        console.print("metrics: " + " ".join(f"{k}={v:.4g}" for k, v in run.metrics.items()), soft_wrap=True)
    if run.folder:
        console.print(f"folder: {run.folder}", soft_wrap=True)
    return EXIT_OK


def _runs_logs(store: RunStore, args: argparse.Namespace) -> int:
    """Print step logs; with --follow keep printing new lines until the run is over."""
    run = store.get_run(args.run)
    names = [s.name for s in run.steps]
    if args.step is not None and args.step not in names:
        raise CellpipeError(f"run {run.id} has no step {args.step!r} (its steps: {', '.join(names)})")
    wanted = [args.step] if args.step else names
    prefix = args.step is None
    offsets: dict[str, int] = {}
    partial: dict[str, str] = {}

    def drain() -> bool:
        """Print what the logs gained since the last look; True if anything was printed."""
        printed = False
        current = store.get_run(run.id)
        for step in current.steps:
            if step.name not in wanted:
                continue
            log = Path(step.log_path) if step.log_path else None
            if log is None or not log.exists():
                continue
            with log.open("rb") as handle:
                handle.seek(offsets.get(step.name, 0))
                data = handle.read()
            if not data:
                continue
            offsets[step.name] = offsets.get(step.name, 0) + len(data)
            text = partial.pop(step.name, "") + data.decode("utf-8", errors="replace")
            lines = text.split("\n")
            if lines[-1]:
                partial[step.name] = lines[-1]  # a line still being written: wait for its end
            for line in lines[:-1]:
                sys.stdout.write(f"{step.name} | {line}\n" if prefix else f"{line}\n")
            printed = True
        sys.stdout.flush()
        return printed

    drain()
    while args.follow and store.get_run(run.id).state == "running":
        if not drain():
            time.sleep(0.25)
    if args.follow:
        drain()  # the last lines, written as the run finished
    for step, rest in partial.items():
        sys.stdout.write(f"{step} | {rest}\n" if prefix else f"{rest}\n")
    return EXIT_OK


def _run_json(run: RunRecord, steps: bool) -> dict[str, Any]:
    data = dataclasses.asdict(run)
    data["metrics"] = run.metrics
    if not steps:
        data["steps"] = [{"name": s.name, "state": s.state} for s in run.steps]
    return data


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else ""


def _seconds(value: float | None) -> str:
    return f"{value:.1f}s" if value is not None else ""


# ---------------------------------------------------------------- argument parsers


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook")
    add_parameter_options(p, "a parameter value")
    p.add_argument("--engine", default="local", help="local (default) or kfp")
    p.add_argument(
        "-o", "--output", metavar="OUT.ipynb", help="write the executed notebook, as papermill writes it"
    )
    caching = p.add_mutually_exclusive_group()
    caching.add_argument(
        "--cache",
        action="store_true",
        help="reuse the results of earlier runs for steps whose code, inputs, parameters and settings are "
        "unchanged (not steps tagged cache:off); by default only steps tagged cache:on are reused",
    )
    caching.add_argument("--no-cache", action="store_true", help="run every step, reusing no cached result")
    p.add_argument("--resume", metavar="RUN", help="re-run only what failed or never ran in run RUN")
    p.add_argument("--max-parallel", type=int, metavar="N", help="run at most N steps at once")
    p.add_argument(
        "--fit-resources",
        action="store_true",
        help="local engine: shrink CPU/memory requests to this machine and run GPU steps on the CPU "
        "instead of refusing the run",
    )
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report, one test case per step")
    p.add_argument("--json-events", action="store_true", help="one JSON event per line on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="only the final summary line and errors")
    cli_kfp.add_connection_options(p, experiment=True)


def _runs_arguments(p: argparse.ArgumentParser) -> None:
    runs = p.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    q = runs.add_parser("list", help="the newest runs")
    q.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    q.add_argument("--json", action="store_true")
    _add_engine_option(q)
    q = runs.add_parser("show", help="a run with its steps, timings and metrics")
    q.add_argument("run", help="run id, or a unique prefix of one")
    q.add_argument("--json", action="store_true")
    _add_engine_option(q)
    q = runs.add_parser("logs", help="a run's step logs")
    q.add_argument("run", help="run id, or a unique prefix of one")
    q.add_argument("step", nargs="?", help="only this step")
    q.add_argument("-f", "--follow", action="store_true", help="keep printing until the run finishes")
    q = runs.add_parser("cancel", help="ask the engine of a running run to cancel it")
    q.add_argument("run", help="run id, or a unique prefix of one")
    _add_engine_option(q)


def _add_engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=["local", "kfp"],
        default="local",
        help="kfp: ask the KFP cluster (RUN: a KFP run id too)",
    )
    cli_kfp.add_connection_options(parser)


COMMANDS = [
    Command("run", "run the notebook as a pipeline (local engine by default)", _run_arguments, _run),
    Command("runs", "runs in the local run store ($CELLPIPE_HOME)", _runs_arguments, _runs),
]
