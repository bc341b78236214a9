"""The REST API under ``/cellpipe/api/``: validate, compile, graph, runs, live events, metrics.

Every handler is a jupyter_server `APIHandler` (JSON errors, origin checks, XSRF on mutating
requests unless the request carries a token), `@tornado.web.authenticated` and `@authorized` on
the ``cellpipe`` resource, so the server's own identity provider and authorizer decide who may
do what. Notebook paths are relative to the server's root directory and are resolved so they can
never leave it (no absolute paths, no ``..``, no symlink pointing outside).

Runs started here execute in the server process, each on its own thread (`LiveRun`); their event
streams are kept in memory, log lines included. Runs started elsewhere (the CLI, an earlier
server) are read from the run store, whose event table has every event except log lines.

The modules: `paths` (paths and bodies a request may give), `service` (shared state, live feeds, run
JSON), `base` (the base handler), `events` (the SSE stream), this module (the other endpoints and
`setup`, the wiring).
"""

from __future__ import annotations

import asyncio
import atexit
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from tornado import web

from converter.engines.base import RunRequest
from converter.engines.registry import get_engine
from converter.errors import CellpipeError
from converter.notebook.parameters import typed_values
from converter.notebook.reader import check_node, load
from converter.reports import graph
from converter.store.workspace import Workspace
from jupyter_ext.runs import LiveRun
from jupyter_ext.server.base import API_PREFIX, RUN_ID, CellpipeHandler
from jupyter_ext.server.endpoints import KfpEndpoints
from jupyter_ext.server.events import EventsHandler
from jupyter_ext.server.paths import ApiError, resolve_notebook
from jupyter_ext.server.service import Service, live_run_json, run_json

DEFAULT_RUN_LIST = 50
MAX_RUN_LIST = 1000


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
            if run.run_id is not None and run.run_id not in known and self.run_record(run.run_id) is None
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
            pipeline=pipeline, notebook=path, parameters=parameters, use_cache=body.get("use_cache")
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
