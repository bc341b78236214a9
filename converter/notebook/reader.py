"""Notebook -> `Pipeline`: cells grouped into steps, settings merged, data flow inferred, all problems found.

The reader never stops at the first mistake: it gathers every problem, then raises one
`InvalidNotebook` carrying them all (warnings ride along on the `Pipeline`).

The stages live in their own modules: `settings` and `kale` (notebook metadata), `cells` (tags and
analysis per cell), `grouping` (cells -> steps and roles), `parameter_cells`, `dataflow` (inputs,
outputs, steps), `metrics`, `order` (edges, topological order, files between steps).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from converter.errors import CellpipeError, InvalidNotebook
from converter.model import Pipeline, Problem
from converter.notebook import dataflow, grouping, order, parameter_cells, search_space, served
from converter.notebook.cells import parse_cells
from converter.notebook.drafts import Report, code_cell
from converter.notebook.settings import notebook_settings
from converter.notebook.structure import check_structure
from converter.step import carry


def read_notebook(path: str | Path) -> Pipeline:
    """Read and validate a notebook file; raise `InvalidNotebook` listing every error."""
    pipeline, problems = check_notebook(path)
    if pipeline is None:
        raise InvalidNotebook(problems)
    return pipeline


def check_notebook(path: str | Path) -> tuple[Pipeline | None, list[Problem]]:
    """All problems of a notebook file, and its pipeline when it has no errors."""
    path = Path(path)
    return check_node(load(path), str(path))


def load(path: Path) -> dict[str, Any]:
    """Read any nbformat version (older ones upgraded to v4); unreadable files are user errors.

    A v4 file is read as plain JSON: importing nbformat pulls in jsonschema and its format
    checkers, which can cost more than a second, on the path of every `cellpipe run`. Older
    formats go through nbformat, which knows how to upgrade them.
    """
    if path.is_dir():
        raise CellpipeError(f"{path}: is a folder, not a notebook file")
    if not path.is_file():
        raise CellpipeError(f"{path}: no such notebook")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellpipeError(f"{path}: not a readable Jupyter notebook ({reason})") from None
    if isinstance(data, dict) and data.get("nbformat") == 4 and isinstance(data.get("cells"), list):
        for cell in data["cells"]:
            source = cell.get("source") if isinstance(cell, dict) else None
            if isinstance(source, list) and all(isinstance(line, str) for line in source):
                cell["source"] = "".join(source)  # anything else is for check_structure to report
        return data
    import nbformat

    try:
        return dict(nbformat.reads(text, as_version=4))
    except Exception as exc:  # nbformat raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellpipeError(f"{path}: not a readable Jupyter notebook ({reason})") from None


def check_node(nb: Mapping[str, Any], notebook: str) -> tuple[Pipeline | None, list[Problem]]:
    """Build the pipeline of an in-memory notebook; the server extension calls this directly."""
    report = Report(notebook)
    pipeline = _build(report, nb) if check_structure(report, nb) else None
    problems = sorted(report.problems, key=_problem_order)
    if any(p.severity == "error" for p in problems):
        return None, problems
    return pipeline, problems


def _problem_order(problem: Problem) -> tuple[int, int]:
    return (problem.cell if problem.cell is not None else -1, 0 if problem.severity == "error" else 1)


def _build(report: Report, nb: Mapping[str, Any]) -> Pipeline | None:
    meta = notebook_settings(report, nb)
    cells = parse_cells(report, nb)
    drafts, roles, preamble = grouping.group(report, cells)
    if not drafts:
        # As under papermill, a notebook with nothing to run runs (and does nothing);
        # compiling it for KFP, which needs a task, is the error.
        report.warn(
            None,
            None,
            "nothing to run: no code cells outside imports, functions, parameters, metrics and skipped cells",
        )
    parameters = parameter_cells.parameters(report, roles.get("parameters", []))
    report.problems.extend(search_space.check(report.notebook, parameters)[1])
    steps, edges = dataflow.data_flow(report, drafts, roles, preamble, parameters, meta)
    if steps is None or edges is None:
        return None
    pipeline = Pipeline(
        name=meta["name"],
        notebook=report.notebook,
        description=meta["description"],
        experiment=meta["experiment"],
        image=meta["image"],
        imports=tuple(code_cell(c) for c in roles.get("imports", [])),
        functions=tuple(code_cell(c) for c in roles.get("functions", [])),
        parameters=parameters,
        steps=steps,
        edges=edges,
        volumes=tuple(meta["volumes"]),
        warnings=(),
        cache_default=meta["cache"],
    )
    order.check_file_passing(report, pipeline, drafts)
    for lost in carry.uncarried(pipeline):
        report.warn(
            lost.cell,
            None,
            f"line {lost.line}: {lost.what} sets state that the steps after {lost.step!r} will not see: "
            f"{lost.why}",
        )
    report.problems.extend(served.problems(pipeline))
    return _with_warnings(pipeline, [p for p in report.problems if p.severity == "warning"])


def _with_warnings(pipeline: Pipeline, warnings: list[Problem]) -> Pipeline:
    return replace(pipeline, warnings=tuple(sorted(warnings, key=_problem_order)))
