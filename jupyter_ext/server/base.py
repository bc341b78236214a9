"""`CellpipeHandler`, the base of every API handler: the shared `Service`, JSON answers and errors,
request bodies, and converter work kept off the event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from jupyter_server.base.handlers import APIHandler

from converter.errors import CellpipeError, InvalidNotebook
from converter.model import Pipeline
from converter.notebook.reader import check_node, load
from converter.store.runstore import AmbiguousRunId, RunRecord
from jupyter_ext.server.paths import ApiError, parse_body, resolve_notebook
from jupyter_ext.server.service import Service

AUTH_RESOURCE = "cellpipe"
API_PREFIX = "cellpipe/api"
RUN_ID = r"(?P<run_id>[A-Za-z0-9][A-Za-z0-9._-]*)"  # in URL patterns

T = TypeVar("T")


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
        """The stored run `run_id` (or a unique prefix) names; None if none; a 400 listing the
        candidates if several runs start with it."""
        try:
            return self.service.store.get_run(run_id)
        except AmbiguousRunId as error:
            raise ApiError(400, str(error), candidates=error.candidates) from None
        except CellpipeError:
            return None
