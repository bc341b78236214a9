"""The REST API under ``/cellpipe/api/``: validate, compile, graph, runs, live events, metrics.

Every handler is a jupyter_server `APIHandler` (JSON errors, origin checks, XSRF on mutating
requests unless the request carries a token), `@tornado.web.authenticated` and `@authorized` on
the ``cellpipe`` resource, so the server's own identity provider and authorizer decide who may
do what. Notebook paths are relative to the server's root directory and are resolved so they can
never leave it (no absolute paths, no ``..``, no symlink pointing outside).

Runs started here execute in the server process, each on its own thread (`LiveRun`); their event
streams are kept in memory, log lines included. Runs started elsewhere (the CLI, an earlier
server) are read from the run store, whose event table has every event except log lines.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from converter.engines.base import RunRequest
from converter.engines.registry import get_engine
from converter.errors import CellpipeError, InvalidNotebook
from converter.events import Event, RunView
from converter.model import Pipeline
from converter.notebook.parameters import typed_values
from converter.notebook.reader import check_node, load
from converter.reports import graph
from converter.store.runstore import RunRecord, RunStore
from converter.store.workspace import Workspace
from jupyter_ext.metrics import RunMetrics
from jupyter_ext.runs import LiveRun, LiveRuns
from jupyter_ext.server.endpoints import KfpEndpoints

AUTH_RESOURCE = "cellpipe"
API_PREFIX = "cellpipe/api"
HEARTBEAT_SECONDS = 15.0  # an SSE comment line keeps proxies from closing an idle stream
STORE_POLL_SECONDS = 0.5  # following a run another process is running
DEFAULT_RUN_LIST = 50
EVENT_STREAM = "text/event-stream; charset=utf-8"
MAX_RUN_LIST = 1000
MAX_BODY_BYTES = 1 << 20  # requests are a path and a few parameters: a megabyte is plenty
MAX_BODY_DEPTH = 32  # lists and objects in parameter values, nested
RUN_ID = r"(?P<run_id>[A-Za-z0-9][A-Za-z0-9._-]*)"  # in URL patterns

T = TypeVar("T")


class ApiError(web.HTTPError):
    """A 4xx whose JSON body is ``{"message", ...extra}``."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(status, message.replace("%", "%%"))
        self.message = message
        self.extra = extra


@dataclass
class Service:
    """What the handlers share: the root they serve, the run store, live runs and metrics."""

    root: Path
    workspace: Workspace
    runs: LiveRuns = field(default_factory=LiveRuns)
    kfp_endpoints: KfpEndpoints = field(default_factory=lambda: KfpEndpoints({}))
    metrics: RunMetrics = field(default_factory=RunMetrics)
    # One worker: reading and compiling notebooks stays off the event loop, and the KFP compiler,
    # which patches module state while it works, never runs twice at once.
    converter: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="cellpipe-convert")
    )
    _store: RunStore | None = None
    _feeds: dict[str, Feed] = field(default_factory=dict)

    @property
    def store(self) -> RunStore:
        if self._store is None:
            self._store = RunStore(self.workspace.database)
        return self._store

    def feed(self, run: LiveRun) -> Feed:
        """The shared feed of a live run (called on the event loop)."""
        assert run.run_id is not None
        feed = self._feeds.get(run.run_id)
        if feed is None:
            feed = self._feeds[run.run_id] = Feed(run, asyncio.get_running_loop())
        return feed

    def leave(self, feed: Feed, wake: asyncio.Event) -> None:
        """A client is gone; the feed goes with its last client (the run keeps the events)."""
        feed.clients.discard(wake)
        if not feed.clients and feed.run.run_id is not None:
            self._feeds.pop(feed.run.run_id, None)
            feed.close()

    def stop_runs(self) -> None:
        """At server exit: cancel the runs still going so no step process outlives the server."""
        running = [run for run in self.runs.all() if not run.finished]
        for run in running:
            run.cancel()
        for run in running:
            run.wait(10)


# ---------------------------------------------------------------------- paths and bodies


def resolve_notebook(root: Path, given: object) -> Path:
    """The notebook file `given` (relative to `root`) names, or an `ApiError` saying why not."""
    if not isinstance(given, str) or not given.strip():
        raise ApiError(400, "'path' must be a non-empty string, relative to the server's root directory")
    if "\0" in given:
        raise ApiError(400, "'path' contains a NUL character")
    posix, windows = PurePosixPath(given), PureWindowsPath(given)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or given.startswith(("/", "\\")):
        raise ApiError(400, f"{given}: absolute paths are not allowed; give one relative to the server root")
    if ".." in posix.parts or ".." in windows.parts:
        raise ApiError(400, f"{given}: '..' is not allowed in notebook paths")
    real_root = root.resolve()
    target = (real_root / posix).resolve()
    if not target.is_relative_to(real_root):
        raise ApiError(403, f"{given}: resolves outside the server's root directory")
    if not target.exists():
        raise ApiError(404, f"{given}: no such notebook")
    if not target.is_file() or target.suffix != ".ipynb":
        raise ApiError(400, f"{given}: not a notebook (.ipynb file)")
    return target


def shown_path(root: Path, path: str) -> str:
    """A path as clients should see it: relative to the server root when it is inside."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return path


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", dict: "an object", bool: "true or false", int: "an integer", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _too_deep(value: object, limit: int) -> bool:
    """Is `value` nested more than `limit` lists/objects deep? (Iterative: no recursion to exhaust.)"""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def parse_body(body: bytes, required: Mapping[str, type], optional: Mapping[str, type]) -> dict[str, Any]:
    """The request's JSON object with its fields checked, or a 4xx naming the first thing wrong.

    Bodies are capped in size and nesting depth: a huge or deeply nested body is refused before
    anything (json, parameter checks, the run store) walks it."""
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted")
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the request body is not valid JSON ({error})") from None
    except RecursionError:
        data = None
        deep = True
    else:
        deep = _too_deep(data, MAX_BODY_DEPTH)
    if deep:
        raise ApiError(400, f"the request body is nested too deeply (at most {MAX_BODY_DEPTH} levels)")
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join(sorted({*required, *optional}))
        fields = f"field{'s' * (len(unknown) > 1)} {', '.join(unknown)}"
        raise ApiError(400, f"unknown {fields} (allowed: {allowed})")
    for name in required:
        if name not in data:
            raise ApiError(400, f"missing field {name!r}")
    for name, kind in {**required, **optional}.items():
        if name not in data:
            continue
        value = data[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ApiError(400, f"field {name!r} must be {_type_name(kind)}, not {json.dumps(value)[:60]}")
    return data


# ---------------------------------------------------------------------- JSON views


def run_json(root: Path, record: RunRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "pipeline": record.pipeline,
        "notebook": shown_path(root, record.notebook),
        "engine": record.engine,
        "state": record.state,
        "message": record.message,
        "created": record.created,
        "started": record.started,
        "finished": record.finished,
        "duration": record.duration,
        "parameters": record.parameters,
        "remote_id": record.remote_id,
        "resumed_from": record.resumed_from,
        "cancel_requested": record.cancel_requested,
        "metrics": record.metrics,
        "steps": [
            {
                "name": step.name,
                "state": step.state,
                "attempt": step.attempt,
                "started": step.started,
                "finished": step.finished,
                "duration": step.duration,
                "exit_code": step.exit_code,
                "message": step.message,
                "cached_from": step.cached_from,
                "metrics": step.metrics,
            }
            for step in record.steps
        ],
    }


def live_run_json(root: Path, run: LiveRun) -> dict[str, Any]:
    """A run the store does not know (an engine that keeps no local record), folded from its events."""
    events = run.events_after(0)
    data = events[0].data or {}
    view = RunView([str(name) for name in data.get("steps", [s.name for s in run.request.pipeline.steps])])
    for event in events:
        view.apply(event)
    return {
        "id": view.run_id,
        "pipeline": view.pipeline or run.request.pipeline.name,
        "notebook": shown_path(root, str(run.request.notebook)),
        "engine": view.engine or run.engine.name,
        "state": run.state,
        "message": view.message,
        "created": events[0].time,
        "started": view.started if view.started is not None else events[0].time,
        "finished": view.finished,
        "duration": view.duration,
        "parameters": data.get("parameters", run.request.parameters),
        "metrics": view.metrics,
        "steps": [
            {
                "name": name,
                "state": step.state,
                "attempt": step.attempt,
                "duration": step.duration,
                "message": step.message,
            }
            for name, step in view.steps.items()
        ],
    }


def sse_frame(event: Event) -> bytes:
    body = json.dumps(event.to_json(), separators=(",", ":"), default=str)
    return f"id: {event.seq}\nevent: {event.type}\ndata: {body}\n\n".encode()


class Feed:
    """One live run's stream as this server's clients read it.

    Each event is encoded once, on the event loop, for every client; the engine's thread wakes the
    loop at most once per batch of events (not once per event per client), and the loop then wakes
    every client of the run. This is what keeps fifty clients of a chatty run within milliseconds.
    """

    def __init__(self, run: LiveRun, loop: asyncio.AbstractEventLoop):
        self.run = run
        self.loop = loop
        self.clients: set[asyncio.Event] = set()
        self._frames: list[bytes] = []
        self._first_seq = 1
        self._last_seq = 0
        self._ended = False
        self._pending = False  # a wake-up is already on its way to the loop
        self._unsubscribe = run.listen(self._on_event)

    def _on_event(self) -> None:  # on the engine's thread
        if self._pending:
            return
        self._pending = True
        with contextlib.suppress(RuntimeError):  # the server's loop is gone
            self.loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        self._pending = False
        for wake in self.clients:
            wake.set()

    def join(self) -> asyncio.Event:
        wake = asyncio.Event()
        self.clients.add(wake)
        return wake

    def close(self) -> None:
        self._unsubscribe()

    def frames_after(self, seq: int) -> tuple[bytes, int, bool]:
        """The encoded events after `seq`, the last one's sequence number, and whether the run ended."""
        new = self.run.events_after(self._last_seq)
        if new:
            if not self._frames:
                self._first_seq = new[0].seq
            self._frames.extend(map(sse_frame, new))
            self._last_seq = new[-1].seq
            self._ended = self._ended or new[-1].type == "run_finished"
        start = max(0, seq - self._first_seq + 1)
        ended = self._ended or (self.run.finished and not self.run.events_after(self._last_seq))
        return b"".join(self._frames[start:]), self._last_seq, ended


# ---------------------------------------------------------------------- handlers


class CellpipeHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def service(self) -> Service:
        service: Service = self.settings["cellpipe"]
        return service

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": error.message, **error.extra}))
            return
        super().write_error(status_code, **kwargs)

    def write_json(self, data: object, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    def body(
        self, required: Mapping[str, type], optional: Mapping[str, type] | None = None
    ) -> dict[str, Any]:
        return parse_body(self.request.body, required, optional or {})

    async def convert(self, work: Callable[[], T]) -> T:
        """Run converter code on the converter thread, turning user errors into 422s."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.service.converter, work)
        except InvalidNotebook as error:
            problems = [p.to_json() for p in error.problems]
            raise ApiError(422, str(error), problems=problems) from None
        except CellpipeError as error:
            raise ApiError(422, str(error)) from None

    async def pipeline(self, given: object) -> tuple[Path, Pipeline]:
        path = resolve_notebook(self.service.root, given)
        name = str(given)

        def read() -> Pipeline:
            pipeline, problems = check_node(load(path), name)
            if pipeline is None:
                raise InvalidNotebook(problems)
            return pipeline

        return path, await self.convert(read)

    def run_record(self, run_id: str) -> RunRecord | None:
        try:
            return self.service.store.get_run(run_id)
        except CellpipeError:
            return None


class ValidateHandler(CellpipeHandler):
    @web.authenticated
    @authorized(action="read")
    async def post(self) -> None:
        given = self.body({"path": str})["path"]
        path = resolve_notebook(self.service.root, given)
        pipeline, problems = await self.convert(lambda: check_node(load(path), given))
        problems_json = [p.to_json() for p in problems]
        self.write_json({"path": given, "valid": pipeline is not None, "problems": problems_json})


class CompileHandler(CellpipeHandler):
    @web.authenticated
    @authorized(action="read")
    async def post(self) -> None:
        from converter.kfp.compile import compile_pipeline  # kfp is slow to import: only when compiling

        _, pipeline = await self.pipeline(self.body({"path": str})["path"])
        compiled = await self.convert(lambda: compile_pipeline(pipeline))
        self.set_header("Content-Disposition", f'attachment; filename="{compiled.name}.yaml"')
        self.finish(compiled.ir_yaml, set_content_type="application/yaml; charset=utf-8")


class GraphHandler(CellpipeHandler):
    @web.authenticated
    @authorized(action="read")
    async def get(self) -> None:
        given = self.get_query_argument("path", None)
        if given is None:
            raise ApiError(400, "missing query argument 'path'")
        _, pipeline = await self.pipeline(given)
        self.write_json(graph.to_json(pipeline))


class RunsHandler(CellpipeHandler):
    @web.authenticated
    @authorized(action="read")
    async def get(self) -> None:
        text = self.get_query_argument("limit", str(DEFAULT_RUN_LIST))
        if not text.isdigit() or not 1 <= int(text) <= MAX_RUN_LIST:
            raise ApiError(400, f"'limit' must be a whole number from 1 to {MAX_RUN_LIST}")
        root = self.service.root
        records = self.service.store.list_runs(int(text))
        known = {record.id for record in records}
        runs = [run_json(root, record) for record in records]
        runs += [
            live_run_json(root, run)
            for run in self.service.runs.all()
            if run.run_id not in known and self.run_record(run.run_id or "") is None
        ]
        self.write_json({"runs": runs})

    @web.authenticated
    @authorized(action="execute")
    async def post(self) -> None:
        optional = {"parameters": dict, "engine": str, "use_cache": bool, "endpoint": str}
        body = self.body({"path": str}, optional)
        path, pipeline = await self.pipeline(body["path"])
        try:
            parameters = typed_values(pipeline, body.get("parameters", {}))
            name = body.get("engine", "local")
            # A KFP endpoint only by name: a browser never names a host the server would send a token to.
            options = self.service.kfp_endpoints.engine_options(name, body.get("endpoint"))
            engine = get_engine(name, **options)
        except CellpipeError as error:
            raise ApiError(400, str(error)) from None
        request = RunRequest(
            pipeline=pipeline, notebook=path, parameters=parameters, use_cache=body.get("use_cache", True)
        )
        metrics = self.service.metrics
        run = LiveRun(engine, request, [lambda event: metrics.observe(engine.name, event)])
        try:
            run_id = await asyncio.wrap_future(run.start())
        except CellpipeError as error:  # the engine refused the run (resources, unknown parameter...)
            raise ApiError(422, str(error)) from None
        self.service.runs.add(run)
        record = self.run_record(run_id)
        answer = run_json(self.service.root, record) if record else live_run_json(self.service.root, run)
        self.set_header("Location", url_path_join(self.base_url, API_PREFIX, "runs", run_id))
        self.write_json(answer, status=201)


class RunHandler(CellpipeHandler):
    @web.authenticated
    @authorized(action="read")
    async def get(self, run_id: str) -> None:
        record = self.run_record(run_id)
        if record is not None:
            self.write_json(run_json(self.service.root, record))
            return
        run = self.service.runs.get(run_id)
        if run is None:
            raise ApiError(404, f"no run {run_id!r}")
        self.write_json(live_run_json(self.service.root, run))

    @web.authenticated
    @authorized(action="execute")
    async def delete(self, run_id: str) -> None:
        record = self.run_record(run_id)
        full_id = record.id if record else run_id
        run = self.service.runs.get(full_id)
        if run is not None and not run.finished:
            run.cancel()
            self.write_json({"id": full_id, "cancel_requested": True}, status=202)
            return
        if record is None and run is None:
            raise ApiError(404, f"no run {run_id!r}")
        if record is not None and self.service.store.request_cancel(record.id):
            # the engine running it (maybe in another process) polls for the request
            self.write_json({"id": full_id, "cancel_requested": True}, status=202)
            return
        state = run.state if run is not None else record.state if record else "finished"
        raise ApiError(409, f"run {full_id} is not running (it {state})", state=state)


class EventsHandler(CellpipeHandler):
    """Server-sent events: ``id:`` the event's sequence number, ``event:`` its type, ``data:`` its JSON.

    Resumes after ``Last-Event-ID`` (sent by a reconnecting EventSource) or ``?after=N``;
    replays what was missed, then streams live, and ends after ``run_finished``.
    """

    _closed = False
    _wake: asyncio.Event | None = None

    def on_connection_close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    def _after(self) -> int:
        text = self.request.headers.get("Last-Event-ID") or self.get_query_argument("after", "0")
        if not text.strip().isdigit():
            raise ApiError(400, f"the event id to resume after must be a whole number, not {text!r}")
        return int(text)

    @web.authenticated
    @authorized(action="read")
    async def get(self, run_id: str) -> None:
        after = self._after()
        record = self.run_record(run_id)
        full_id = record.id if record else run_id
        run = self.service.runs.get(full_id)
        if run is None and record is None:
            raise ApiError(404, f"no run {run_id!r}")
        self.set_header("Content-Type", EVENT_STREAM)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        clients = self.service.metrics.stream_clients
        clients.inc()
        try:
            self.write(b"retry: 2000\n\n")
            await self.flush()
            if run is not None:
                await self._stream_live(run, after)
            else:
                await self._stream_stored(full_id, after)
        except StreamClosedError:
            pass
        finally:
            clients.dec()
        if not self._closed:
            self.finish(set_content_type=EVENT_STREAM)

    async def _send(self, events: list[Event]) -> None:
        self.write(b"".join(map(sse_frame, events)))
        await self.flush()

    async def _idle(self, wake: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(wake.wait(), HEARTBEAT_SECONDS)
        except TimeoutError:
            self.write(b": keep-alive\n\n")
            await self.flush()

    async def _stream_live(self, run: LiveRun, after: int) -> None:
        feed = self.service.feed(run)
        wake = self._wake = feed.join()
        try:
            while not self._closed:
                wake.clear()
                frames, last_seq, ended = feed.frames_after(after)
                if frames:
                    self.write(frames)
                    await self.flush()
                    after = last_seq
                if ended:
                    return
                if not frames:
                    await self._idle(wake)
        finally:
            self.service.leave(feed, wake)

    async def _stream_stored(self, run_id: str, after: int) -> None:
        """A run this server did not start: the store's events (no log lines), polled while it runs."""
        store = self.service.store
        quiet = 0.0
        while not self._closed:
            events = store.events(run_id, after)
            if events:
                await self._send(events)
                after = events[-1].seq
                if events[-1].type == "run_finished":
                    return
                quiet = 0.0
            elif store.get_run(run_id).state != "running":
                return  # ended without a run_finished event (an old store): nothing more will come
            await asyncio.sleep(STORE_POLL_SECONDS)
            quiet += STORE_POLL_SECONDS
            if quiet >= HEARTBEAT_SECONDS:
                quiet = 0.0
                self.write(b": keep-alive\n\n")
                await self.flush()


class KfpEndpointsHandler(CellpipeHandler):
    """The server's named KFP endpoints (`jupyter_ext.server.endpoints`), without credentials."""

    @web.authenticated
    @authorized(action="read")
    async def get(self) -> None:
        self.write_json({"endpoints": self.service.kfp_endpoints.listing()})


class MetricsHandler(CellpipeHandler):
    @web.authenticated
    @authorized(action="read")
    async def get(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST

        self.finish(self.service.metrics.exposition(), set_content_type=CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------------- wiring


def setup(
    web_app: Any,
    root_dir: str,
    more: Sequence[tuple[str, type]] = (),
    kfp_endpoints: KfpEndpoints | None = None,
) -> Service:
    """Add the API to a running server's tornado application (`more`: patterns under the API prefix)."""
    service = Service(
        root=Path(os.path.expanduser(root_dir)),
        workspace=Workspace.default(),
        kfp_endpoints=kfp_endpoints or KfpEndpoints({}),
    )
    web_app.settings["cellpipe"] = service
    base = url_path_join(web_app.settings["base_url"], API_PREFIX)
    run_id = RUN_ID
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "validate"), ValidateHandler),
            (url_path_join(base, "compile"), CompileHandler),
            (url_path_join(base, "graph"), GraphHandler),
            (url_path_join(base, "runs"), RunsHandler),
            (url_path_join(base, "runs", run_id), RunHandler),
            (url_path_join(base, "runs", run_id, "events"), EventsHandler),
            (url_path_join(base, "metrics"), MetricsHandler),
            (url_path_join(base, "kfp", "endpoints"), KfpEndpointsHandler),
        ]
        + [(url_path_join(base, pattern), handler) for pattern, handler in more],
    )
    atexit.register(service.stop_runs)
    return service
