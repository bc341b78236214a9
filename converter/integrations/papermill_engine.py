"""`papermill --engine cellpipe in.ipynb out.ipynb -p x 1`: papermill's front end, cellpipe's pipeline run.

Teams that already drive notebooks with papermill (scripts, Airflow's PapermillOperator, scrapbook)
get parallel steps, caching and the run store by adding one flag. papermill parameterizes the
notebook and writes the output; this engine runs the steps and puts each cell's outputs back into
papermill's notebook, so papermill raises `PapermillExecutionError` for a failed cell as it always does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import nbformat
from papermill.engines import Engine, NotebookExecutionManager

from converter.engines.base import RunRequest
from converter.errors import InvalidNotebook
from converter.events import Event


class CellpipeEngine(Engine):
    """Runs the parameterized notebook as a cellpipe pipeline on the local engine."""

    @classmethod
    def execute_managed_notebook(
        cls, nb_man: NotebookExecutionManager, kernel_name: str | None, **kwargs: Any
    ) -> nbformat.NotebookNode:
        from converter.engines.registry import get_engine
        from converter.engines.runner import run_cancellable
        from converter.notebook.reader import check_node
        from converter.reports import (
            executed_notebook,  # not at import: papermill loads this module mid-import
        )
        from converter.reports.progress import Progress
        from converter.store.workspace import step_folders

        nb = nb_man.nb
        parameters = dict(nb.metadata.get("papermill", {}).get("parameters") or {})
        source = _without_injected_cell(nb)
        input_path = str(kwargs.get("input_path") or "notebook.ipynb")
        # Steps run in the notebook's folder; under papermill that is the working directory (--cwd).
        notebook = Path(os.getcwd()) / Path(input_path).name
        pipeline, problems = check_node(source, input_path)
        if pipeline is None:
            raise InvalidNotebook(problems)
        declared = {p.name: p for p in pipeline.parameters}
        # papermill only warns about unknown parameters, and keeps going: so do we.
        typed = {name: value for name, value in parameters.items() if name in declared}

        engine = get_engine("local")
        steps = [s.name for s in pipeline.steps]
        progress = Progress(
            "plain" if kwargs.get("log_output") else "quiet",
            steps,
            stdout=sys.stderr,
            stderr=sys.stderr,
        )
        events: list[Event] = []
        request = RunRequest(pipeline=pipeline, notebook=notebook, parameters=typed)
        try:
            result = run_cancellable(engine, request, [events.append, progress])
        finally:
            progress.close()
        if result.state == "cancelled":
            raise KeyboardInterrupt  # papermill's own reaction to an interrupted kernel

        start = nb_man.start_time.timestamp() if nb_man.start_time else events[0].time if events else 0.0
        done = executed_notebook.build(
            source,
            pipeline,
            executed_notebook.read_step_outputs(step_folders(result.run_id, steps)),
            parameters=parameters,  # the injected cell shows every value papermill was given
            input_path=input_path,
            output_path=str(nb_man.output_path or ""),
            start_time=start,
            end_time=events[-1].time if events else start,
            failures=executed_notebook.failure_messages(events),
        )
        # papermill adds its own error markers after we return.
        nb.cells = [c for c in done.cells if not _tagged(c, _ERROR_MARKER_TAG)]
        nb_man.nb = nb
        for index, cell in enumerate(nb.cells):
            if cell.metadata.get("papermill", {}).get("status") == "failed":
                nb_man.cell_exception(cell, cell_index=index)  # papermill's own bookkeeping of a failure
        return nb


_INJECTED_TAG, _ERROR_MARKER_TAG = "injected-parameters", "papermill-error-cell-tag"


def _tagged(cell: nbformat.NotebookNode, tag: str) -> bool:
    return tag in cell.metadata.get("tags", [])


def _without_injected_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook as its author wrote it: parameters travel as pipeline parameters, not code."""
    copy = nbformat.from_dict(nb)
    copy.cells = [c for c in copy.cells if not _tagged(c, _INJECTED_TAG)]
    return copy
