"""A finished run brought back to the notebook: its executed copy, each step's report, where it failed.

``GET runs/ID/results`` says per step whether it has an HTML report and, for a failed step, the cell
that raised and the error (from the step's ``cell_outputs.json``), so the panel can show the error
with its cell and debug it. ``POST runs/ID/notebook`` writes the executed notebook (every cell's
outputs as its step produced them, the same file ``cellpipe run -o`` writes) next to the run's
notebook under ``cellpipe-runs/``, inside the server root, where JupyterLab can open it.
``GET runs/ID/steps/STEP/report`` serves a step's HTML report, sandboxed (it holds the notebook's own
outputs, which may carry scripts) so it never runs with the server's origin.

These read the local run store and the step folders the local engine writes; a run another engine
ran (KFP) has no local folders, and says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from converter.errors import InvalidNotebook
from converter.notebook.reader import check_node, load
from converter.reports import executed_notebook
from converter.store.runstore import RunRecord
from jupyter_ext.server.base import RUN_ID, CellpipeHandler
from jupyter_ext.server.paths import ApiError

RESULTS_FOLDER = "cellpipe-runs"
REPORT = "report.html"


def step_folders(record: RunRecord) -> dict[str, Path]:
    return {step.name: Path(step.folder) for step in record.steps if step.folder}


def step_error(folder: Path) -> dict[str, Any] | None:
    """The cell that raised in a step and its error, from the step's cell outputs."""
    try:
        result = json.loads((folder / executed_notebook.CELL_OUTPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if result.get("status") != "error":
        return None
    cell = result.get("error_cell")
    for entry in result.get("cells", []):
        for output in entry.get("outputs", []):
            if output.get("output_type") == "error" and (cell is None or entry.get("index") == cell):
                return {
                    "cell": entry.get("index"),
                    "ename": output.get("ename"),
                    "evalue": output.get("evalue"),
                    "traceback": output.get("traceback", []),
                }
    return {"cell": cell, "ename": None, "evalue": None, "traceback": []}


def executed_path(record: RunRecord) -> Path:
    """Where a run's executed notebook goes: beside the notebook, in `cellpipe-runs/`."""
    notebook = Path(record.notebook)
    return notebook.parent / RESULTS_FOLDER / f"{notebook.stem}-{record.id}.ipynb"


class RunFilesHandler(CellpipeHandler):
    """What the handlers of a run's files share: the run's record and paths shown relative to the root."""

    def _record(self, run_id: str) -> RunRecord:
        record = self.run_record(run_id)
        if record is None:
            raise ApiError(404, f"no run {run_id!r} in the run store")
        return record

    def _inside_root(self, path: Path) -> str | None:
        root = self.service.root.resolve()
        try:
            return path.resolve().relative_to(root).as_posix()
        except (ValueError, OSError):
            return None


class RunResultsHandler(RunFilesHandler):
    @web.authenticated
    @authorized(action="read")
    async def get(self, run_id: str) -> None:
        record = self._record(run_id)
        folders = step_folders(record)
        steps = []
        for step in record.steps:
            folder = folders.get(step.name)
            steps.append(
                {
                    "name": step.name,
                    "state": step.state,
                    "message": step.message,
                    "report": folder is not None and (folder / REPORT).is_file(),
                    "error": step_error(folder) if folder is not None and step.state == "failed" else None,
                }
            )
        notebook = self._inside_root(Path(record.notebook))
        self.write_json({"id": record.id, "state": record.state, "notebook": notebook, "steps": steps})


class ExecutedNotebookHandler(RunFilesHandler):
    @web.authenticated
    @authorized(action="write")
    async def post(self, run_id: str) -> None:
        record = self._record(run_id)
        if record.state in ("running", "pending"):
            raise ApiError(
                409, f"run {record.id} is still {record.state}; its notebook is written once it ends"
            )
        notebook = Path(record.notebook)
        target = executed_path(record)
        shown = self._inside_root(target)
        if shown is None:
            raise ApiError(
                409, f"{notebook} is outside the server's root directory: run `cellpipe run -o` there"
            )
        if not notebook.is_file():
            raise ApiError(404, f"{notebook}: the run's notebook is gone")
        folders = step_folders(record)

        def build() -> None:
            source = load(notebook)
            pipeline, problems = check_node(source, str(notebook))
            if pipeline is None:
                raise InvalidNotebook(problems)
            failures = {s.name: s.message or "step failed" for s in record.steps if s.state == "failed"}
            # The record holds every parameter's value; papermill injects only those the user passed.
            defaults = {parameter.name: parameter.default for parameter in pipeline.parameters}
            passed = {k: v for k, v in record.parameters.items() if k not in defaults or defaults[k] != v}
            nb = executed_notebook.build(
                source,
                pipeline,
                executed_notebook.read_step_outputs(folders),
                parameters=passed,
                input_path=str(notebook),
                output_path=str(target),
                start_time=record.started or record.created,
                end_time=record.finished or record.started or record.created,
                failures=failures,
            )
            executed_notebook.write(nb, target)

        await self.convert(build)
        self.write_json({"id": record.id, "path": shown}, status=201)


class StepReportHandler(RunFilesHandler):
    @web.authenticated
    @authorized(action="read")
    async def get(self, run_id: str, step: str) -> None:
        record = self._record(run_id)
        folder = step_folders(record).get(step)
        if folder is None or not (folder / REPORT).is_file():
            raise ApiError(404, f"run {record.id} has no HTML report for step {step!r}")
        # Its own opaque origin: the report's scripts (the notebook's outputs) cannot reach the server.
        self.set_header("Content-Security-Policy", "sandbox allow-scripts allow-popups")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish((folder / REPORT).read_bytes(), set_content_type="text/html; charset=utf-8")


_STEP = r"(?P<step>[A-Za-z0-9][A-Za-z0-9._-]*)"
HANDLERS = [
    (f"runs/{RUN_ID}/results", RunResultsHandler),
    (f"runs/{RUN_ID}/notebook", ExecutedNotebookHandler),
    (f"runs/{RUN_ID}/steps/{_STEP}/report", StepReportHandler),
]
