"""`cellpipe run` and `cellpipe runs`: run a notebook as a pipeline, and look at the run store.

Parameters are given as papermill users give them (`-p NAME VALUE`, `-f params.yaml`), then checked
against the types the notebook's parameters cell declares, so a typo is a clear error before any
step starts rather than a wrong value deep inside a run.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from converter.cli import _EXTRA_PARSERS, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, command
from converter.engines.base import Engine, RunRequest, RunResult
from converter.errors import CellpipeError
from converter.events import Event
from converter.model import Parameter, Pipeline

_EXIT_FOR_STATE = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}
_TRUE, _FALSE = frozenset({"true", "yes", "on", "1"}), frozenset({"false", "no", "off", "0"})


class _NoDatesLoader(yaml.SafeLoader):
    """papermill's YAML loader: dates stay strings, as a notebook parameter expects."""


_NoDatesLoader.yaml_implicit_resolvers = {
    key: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# ---------------------------------------------------------------- parameters


def papermill_value(text: str) -> object:
    """A `-p` value typed exactly as papermill's `_resolve_type` types it."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parameter_values(
    pipeline: Pipeline,
    pairs: Sequence[Sequence[str]],
    files: Sequence[str],
) -> dict[str, Any]:
    """The user's `-f` files (in order), then `-p` pairs, checked and coerced to the declared types.

    Only the values the user gave are returned; the engine fills in the defaults.
    """
    given: dict[str, tuple[object, str | None]] = {}  # name -> (value, raw -p text if any)
    for file in files:
        for name, value in _read_parameter_file(Path(file)).items():
            given[str(name)] = (value, None)
    for name, raw in pairs:
        given[name] = (papermill_value(raw), raw)
    declared = {p.name: p for p in pipeline.parameters}
    values: dict[str, Any] = {}
    for name, (value, text) in given.items():
        parameter = declared.get(name)
        if parameter is None:
            known = ", ".join(sorted(declared)) or "none: it has no parameters cell"
            raise CellpipeError(f"{pipeline.notebook}: unknown parameter {name!r} (its parameters: {known})")
        values[name] = coerce(parameter, value, text, pipeline.notebook)
    return values


def _read_parameter_file(path: Path) -> Mapping[str, object]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoDatesLoader)
    except OSError as error:
        raise CellpipeError(f"{path}: cannot read the parameters file ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise CellpipeError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CellpipeError(f"{path}: a parameters file holds NAME: VALUE pairs, not a {type(data).__name__}")
    return data


def coerce(parameter: Parameter, value: object, raw: str | None, notebook: str) -> object:
    """`value` as the parameter's declared type, or a user error naming parameter, type and notebook.

    `raw` is the `-p` text: a `str` parameter keeps it as typed (papermill would turn `-p tag 1.10`
    into the float 1.1), and a list or dict parameter parses it as JSON/YAML.
    """
    kind = parameter.type

    def wrong(why: str = "") -> CellpipeError:
        shown = raw if raw is not None else value
        return CellpipeError(f"{notebook}: parameter {parameter.name!r} is {kind}; cannot use {shown!r}{why}")

    if kind == "str":
        if raw is not None:
            return raw
        if isinstance(value, bool | int | float | str):
            return str(value)
        raise wrong()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, str | int) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise wrong(" (use true or false)")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise wrong(" (not a whole number)")
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf"):
            return float(value)
        raise wrong(" (not a number)")
    expected: type = list if kind == "list" else dict
    if raw is not None:
        try:
            value = yaml.load(raw, Loader=_NoDatesLoader)
        except yaml.YAMLError:
            raise wrong(" (not JSON or YAML)") from None
    if not isinstance(value, expected):
        example = "[1, 2]" if kind == "list" else '{"a": 1}'
        raise wrong(f" (give a JSON {kind} like {example})")
    if not _finite(value):
        raise wrong(" (NaN and infinity do not travel as JSON)")
    return value


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


# ---------------------------------------------------------------- engines


def make_engine(name: str, max_parallel: int | None) -> Engine:
    """The local engine is built in; others come through the `cellpipe.engines` entry points."""
    if name == "local":
        from converter.engines.local import LocalEngine

        return LocalEngine(max_parallel=max_parallel)
    if name == "kfp" and importlib.util.find_spec("converter.engines.kfp") is None:
        raise CellpipeError("the kfp engine is not available yet: run with --engine local (the default)")
    from converter.engines import get_engine

    return get_engine(name)


def run_cancellable(
    engine: Engine,
    request: RunRequest,
    sinks: list[Callable[[Event], None]],
    on_cancel: Callable[[], None] = lambda: None,
) -> RunResult:
    """Run in a worker thread so Ctrl-C (or SIGTERM from a CI runner) lands here, not inside the engine.

    The first interrupt asks the engine to cancel and then waits for it to clean up: the run ends
    "cancelled" with its state saved and no step process left behind.
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = engine.run(request, sinks)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=work, name="cellpipe-engine", daemon=True)
    with _sigterm_as_interrupt():
        worker.start()
        cancelled = False
        while worker.is_alive():
            try:
                worker.join(0.2)
            except KeyboardInterrupt:
                if not cancelled:
                    cancelled = True
                    on_cancel()
                    engine.cancel()
    if "error" in outcome:
        raise outcome["error"]
    result: RunResult = outcome["result"]
    return result


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (e.g. the server extension)
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- cellpipe run


@command("run")
def _run(args: argparse.Namespace) -> int:
    from converter.progress import Progress, choose_mode
    from converter.reader import load, read_notebook

    notebook = Path(args.notebook)
    pipeline = read_notebook(notebook)
    parameters = parameter_values(pipeline, args.parameter or [], args.parameters_file or [])
    if args.max_parallel is not None and args.max_parallel < 1:
        raise CellpipeError("--max-parallel must be at least 1")
    engine = make_engine(args.engine, args.max_parallel)
    mode = choose_mode(args.quiet, args.json_events, sys.stdout)
    if not args.quiet:
        for warning in pipeline.warnings:
            print(warning, file=sys.stderr)

    request = RunRequest(
        pipeline=pipeline,
        notebook=notebook.resolve(),
        parameters=parameters,
        use_cache=not args.no_cache,
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

    run_dir = _run_dir(result.run_id)
    if args.junit:
        from converter import junit

        steps = [s.name for s in pipeline.steps]
        junit.write(junit.report(pipeline.name, steps, events, _log_tail_reader(run_dir)), Path(args.junit))
    if args.output:
        from converter import executed_notebook

        first = next((e.time for e in events if e.type == "run_started"), started)
        nb = executed_notebook.build(
            load(notebook),
            pipeline,
            executed_notebook.read_step_outputs(run_dir, pipeline),
            parameters=parameters,
            input_path=str(notebook),
            output_path=str(args.output),
            start_time=first,
            end_time=finished,
        )
        executed_notebook.write(nb, Path(args.output))
    return _EXIT_FOR_STATE.get(result.state, EXIT_FAILED)


def _run_dir(run_id: str) -> Path:
    from converter.workspace import Workspace

    return Workspace().run_dir(run_id)


def _log_tail_reader(run_dir: Path) -> Callable[[str], list[str]]:
    def tail(step: str) -> list[str]:
        try:
            text = (run_dir / step / "log.txt").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-50:]

    return tail


# ---------------------------------------------------------------- argument parsers


def _add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the notebook as a pipeline (local engine by default)")
    p.add_argument("notebook")
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="a parameter value, typed as papermill types it (repeatable)",
    )
    p.add_argument(
        "-f",
        "--parameters-file",
        action="append",
        metavar="FILE",
        help="a YAML file of NAME: VALUE parameters (repeatable; -p wins)",
    )
    p.add_argument("--engine", default="local", help="local (default) or kfp")
    p.add_argument(
        "-o", "--output", metavar="OUT.ipynb", help="write the executed notebook, as papermill writes it"
    )
    p.add_argument("--no-cache", action="store_true", help="run every step, reusing no cached result")
    p.add_argument("--resume", metavar="RUN", help="re-run only what failed or never ran in run RUN")
    p.add_argument("--max-parallel", type=int, metavar="N", help="run at most N steps at once")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report, one test case per step")
    p.add_argument("--json-events", action="store_true", help="one JSON event per line on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="only the final summary line and errors")


_EXTRA_PARSERS.append(_add_parsers)
