"""`cellpipe run -o OUT.ipynb`: the notebook written back as papermill would have written it.

Users and tools (scrapbook, nbconvert reports, CI artifact viewers) read papermill's output format,
so a pipeline run produces the same shape: every cell's outputs as its step produced them, the
`injected-parameters` cell right after the `parameters` cell, `metadata.papermill` on the notebook
and on each cell, and the failing cell flagged with papermill's two error-marker cells.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import papermill
from papermill.execute import ERROR_ANCHOR_MSG, ERROR_MARKER_TAG, ERROR_MESSAGE_TEMPLATE
from papermill.translators import translate_parameters

from converter.events import Event, RunView
from converter.model import Pipeline
from converter.outputs import write_file

INJECTED_TAG = "injected-parameters"
CELL_OUTPUTS_FILE = "cell_outputs.json"


REUSED_KEY = "cellpipe_reused"  # cell metadata: the outputs shown come from an earlier run


def read_step_outputs(folders: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    """Each step's `cell_outputs.json`, given its folder; steps without a readable one are left out."""
    found: dict[str, dict[str, Any]] = {}
    for step, folder in folders.items():
        try:
            found[step] = json.loads((folder / CELL_OUTPUTS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # never started, or killed before writing: its cells show as not run
    return found


def build(
    source: Mapping[str, Any],
    pipeline: Pipeline,
    step_outputs: Mapping[str, Mapping[str, Any]],
    *,
    parameters: Mapping[str, Any],
    input_path: str,
    output_path: str,
    start_time: float,
    end_time: float,
    failures: Mapping[str, str] | None = None,
    reused: Mapping[str, str | None] | None = None,
) -> nbformat.NotebookNode:
    """The executed copy of `source` (as `reader.load` returns it; cell indexes match the pipeline's).

    `parameters` are the values the user passed (papermill injects only those); `step_outputs` maps
    step name to its parsed `cell_outputs.json`; `failures` maps each failed step to why it failed;
    `reused` maps each step answered from the cache or an earlier run to that run's id: its cells'
    outputs are that run's, and each says so in ``metadata.cellpipe_reused`` (the run summary too).
    """
    # To 4.5 (cell ids), as papermill does before inserting.
    nb = nbformat.v4.upgrade(nbformat.from_dict(copy.deepcopy(dict(source))))
    ran = _cells_that_ran(pipeline, step_outputs)
    for name, message in (failures or {}).items():
        _blame(ran, pipeline, name, step_outputs.get(name), message)
    param_cell = min((p.cell for p in pipeline.parameters), default=None)
    reused_at = {
        c.index: (s.name, (reused or {})[s.name])
        for s in pipeline.steps
        if s.name in (reused or {})
        for c in s.cells
    }
    cells: list[nbformat.NotebookNode] = []
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if ERROR_MARKER_TAG in tags or INJECTED_TAG in tags:
            continue  # left by an earlier papermill run: replaced below, as papermill does
        cell.metadata.pop("papermill", None)  # an earlier run's timings would lie about this one
        cell.metadata.pop("execution", None)
        cell.metadata.pop(REUSED_KEY, None)
        if index in reused_at:
            step, from_run = reused_at[index]
            cell.metadata[REUSED_KEY] = {"step": step, "from_run": from_run}
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            record = ran.get(index)
            if record is not None:
                cell.outputs = [nbformat.from_dict(o) for o in record["outputs"]]
                cell.metadata.papermill = cell_metadata(
                    "failed" if record["failed"] else "completed", record["seconds"]
                )
            elif param_cell == index:
                cell.metadata.papermill = cell_metadata("completed", 0.0)  # its values travel as parameters
        cells.append(cell)
        if index == param_cell and parameters:
            cells.append(_injected_cell(nb, parameters))
    if param_cell is None and parameters:
        cells.insert(0, _injected_cell(nb, parameters))  # papermill injects at the top then

    _number_and_settle(cells)
    nb.cells = cells
    failed = next((c for c in cells if c.metadata.get("papermill", {}).get("status") == "failed"), None)
    if failed is not None:
        anchor = nbformat.v4.new_markdown_cell(ERROR_ANCHOR_MSG)
        anchor.metadata["tags"] = [ERROR_MARKER_TAG]
        banner = nbformat.v4.new_markdown_cell(ERROR_MESSAGE_TEMPLATE % str(failed.execution_count))
        banner.metadata["tags"] = [ERROR_MARKER_TAG]
        cells.insert(cells.index(failed), anchor)
        cells.insert(0, banner)
    nb.metadata.papermill = {
        "default_parameters": {p.name: p.default for p in pipeline.parameters},
        "duration": round(end_time - start_time, 6),
        "end_time": _iso(end_time),
        "environment_variables": {},
        "exception": True if failed is not None else None,
        "input_path": input_path,
        "output_path": output_path,
        "parameters": dict(parameters),
        "start_time": _iso(start_time),
        "version": papermill.__version__,
    }
    return nb


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    """Validate, then replace `path` atomically so a reader never sees half a notebook."""
    nbformat.validate(nb)
    text = nbformat.writes(nb)
    write_file(path, (text if text.endswith("\n") else text + "\n").encode("utf-8"))


def _cells_that_ran(
    pipeline: Pipeline, step_outputs: Mapping[str, Mapping[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Cell index -> its outputs, whether it failed and how long it took.

    Imports and functions cells run in every step: the copy shown is the first step's, unless the
    cell failed in some step, since that failure is what the reader of the notebook needs to see.
    """
    ran: dict[int, dict[str, Any]] = {}
    for step in pipeline.steps:
        result = step_outputs.get(step.name)
        if result is None:
            continue
        error_cell = result.get("error_cell") if result.get("status") == "error" else None
        for cell in result.get("cells", []):
            index = cell["index"]
            failed = index == error_cell or any(o.get("output_type") == "error" for o in cell["outputs"])
            if index in ran and (ran[index]["failed"] or not failed):
                continue
            ran[index] = {"outputs": cell["outputs"], "failed": failed, "seconds": cell.get("seconds")}
    return ran


def _blame(
    ran: dict[int, dict[str, Any]], pipeline: Pipeline, step: str, result: Mapping[str, Any] | None, why: str
) -> None:
    """A step that failed outside its cells (timeout, killed, missing package) still fails a cell.

    Papermill would show the cell it was running when it stopped: that is the first of the step's
    cells that did not finish, and it gets an error output saying why.
    """
    if result is not None and result.get("status") == "error" and result.get("error_cell") is not None:
        return  # a cell raised: it already carries the error output
    cells = pipeline.step(step).cells
    finished = {c["index"] for c in (result or {}).get("cells", [])}
    index = next((c.index for c in cells if c.index not in finished), cells[-1].index)
    error = {
        "output_type": "error",
        "ename": "StepFailed",
        "evalue": why,
        "traceback": [f"StepFailed: {why}"],
    }
    record = ran.setdefault(index, {"outputs": [], "seconds": None})
    record["outputs"] = [*record["outputs"], error]
    record["failed"] = True


def _injected_cell(nb: nbformat.NotebookNode, parameters: Mapping[str, Any]) -> nbformat.NotebookNode:
    """Exactly papermill's cell: its translator's source and the `injected-parameters` tag."""
    kernelspec = nb.metadata.get("kernelspec", {})
    kernel = kernelspec.get("name") or "python3"
    language = kernelspec.get("language") or nb.metadata.get("language_info", {}).get("name") or "python"
    source = translate_parameters(kernel, language, dict(parameters), "Parameters")
    cell = nbformat.v4.new_code_cell(source=source)
    cell.metadata["tags"] = [INJECTED_TAG]
    cell.metadata.papermill = cell_metadata("completed", 0.0)
    return cell


def _number_and_settle(cells: list[nbformat.NotebookNode]) -> None:
    """Number the cells that ran top to bottom, as one kernel would have; settle the others.

    Steps count their own cells from 1; the notebook reads as one run, so counts follow notebook
    order and each execute_result carries its cell's count. Cells that never ran (markdown, left-out
    cells) are "completed" up to the first failure and "pending" after it, as papermill leaves them.
    """
    count = 0
    failed_seen = False
    for cell in cells:
        meta = cell.metadata.get("papermill")
        if meta is not None and cell.cell_type == "code":
            count += 1
            cell.execution_count = count
            for output in cell.outputs:
                if output.get("output_type") == "execute_result":
                    output["execution_count"] = count
            failed_seen = failed_seen or meta["status"] == "failed"
        else:  # a code cell here was never run by any step (left out, or its step never ran)
            pending = failed_seen or cell.cell_type == "code"
            cell.metadata.papermill = cell_metadata("pending" if pending else "completed", None)


def cell_metadata(status: str, seconds: float | None) -> dict[str, Any]:
    """A cell's `metadata.papermill`, as papermill's execution manager fills it."""
    return {
        "duration": seconds,
        "end_time": None,
        "exception": status == "failed" if status != "pending" else None,
        "start_time": None,
        "status": status,
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def failure_messages(events: Sequence[Event]) -> dict[str, str]:
    """Why each failed step failed, as the event fold has it (`build`'s `failures`)."""
    run = RunView()
    for event in events:
        run.apply(event)
    return {name: step.message or "step failed" for name, step in run.steps.items() if step.state == "failed"}
