"""The step form's API: every cell's settings as the reader sees them, and form edits turned into tags.

``POST cells`` reads a notebook (the browser's unsaved copy when it sends one, else the saved file)
and answers, per cell, each setting's text and where it is written (`cellsettings.describe`), plus
the pipeline's graph when the notebook is valid: the form and the cell badges show what the reader
sees without the lab extension parsing a tag. ``POST cells/edit`` applies a filled-in form to one
cell's tags and ``metadata.cellpipe`` (`cellsettings.edit`) and returns the new ones with the
problems the reader finds in them; the browser writes them into its notebook model.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from converter.model import Problem
from converter.notebook import cellsettings
from converter.notebook.reader import check_node, load
from converter.notebook.tags import parse_structured
from converter.reports import graph
from jupyter_ext.server.base import CellpipeHandler
from jupyter_ext.server.paths import ApiError, resolve_notebook

TARGETS = ("keep", "tags", "metadata")


def _tags_of(metadata: object) -> list[str]:
    tags = metadata.get("tags", []) if isinstance(metadata, dict) else []
    return [str(tag) for tag in tags] if isinstance(tags, list) else []


def _notebook_defaults(name: str, metadata: object) -> dict[str, str]:
    """The step settings every step gets from the notebook (its `defaults`, or Kale's `steps_defaults`)."""
    if not isinstance(metadata, dict):
        return {}
    ours = metadata.get("cellpipe")
    if isinstance(ours, dict) and isinstance(ours.get("defaults"), dict):
        parse_structured(name, None, ours["defaults"], [])  # only what the reader accepts is shown
        return cellsettings.structured_fields(ours["defaults"])
    kale = metadata.get("kubeflow_notebook")
    if ours is None and isinstance(kale, dict) and isinstance(kale.get("steps_defaults"), list):
        found: dict[str, str] = {}
        for tag in kale["steps_defaults"]:
            found.update(cellsettings.tag_fields(str(tag)))
        return found
    return {}


# Warnings the notebook shows on their cell with a mark of their own, by the reader's wording (a
# test on a real notebook keeps these in step with it).
MARKS = {
    "order": ("in notebook order",),  # the analysis cannot be sure, so the notebook's order decides
    "boundary": ("cannot cross a step boundary", "will not see"),  # a value or state stays behind
}


def mark_of(problem: Problem) -> str | None:
    """`order`, `boundary`, or None: which cell mark a warning gets."""
    if problem.severity != "warning":
        return None
    return next((mark for mark, words in MARKS.items() if any(w in problem.message for w in words)), None)


def cells_view(nb: dict[str, Any], name: str) -> dict[str, Any]:
    """Per cell its fields and sources; the graph and every problem of the notebook."""
    pipeline, problems = check_node(nb, name)
    step_of: dict[int, str] = {}
    starts: set[int] = set()
    if pipeline is not None:
        for step in pipeline.steps:
            step_of.update({cell.index: step.name for cell in step.cells})
            starts.add(step.cells[0].index)
    cells = []
    for index, cell in enumerate(nb.get("cells", [])):
        kind = cell.get("cell_type") if isinstance(cell, dict) else None
        entry: dict[str, Any] = {"index": index, "type": kind}
        if kind == "code":
            metadata = cell.get("metadata", {})
            cellpipe = metadata.get("cellpipe") if isinstance(metadata, dict) else None
            view = cellsettings.describe(name, index, _tags_of(metadata), cellpipe)
            fields = view.to_json()["fields"]
            role = fields.get("role", {}).get("value")
            own_step = fields.get("step", {}).get("value")
            entry.update(
                fields=fields,
                role=role or None,
                step=step_of.get(index, own_step if pipeline is None else None),
                starts=index in starts or (pipeline is None and bool(own_step)),
            )
        cells.append(entry)
    return {
        "valid": pipeline is not None,
        "cells": cells,
        "defaults": _notebook_defaults(name, nb.get("metadata", {})),
        "graph": graph.to_json(pipeline) if pipeline is not None else None,
        "problems": [
            {**problem.to_json(), "field": cellsettings.field_of(problem.tag), "mark": mark_of(problem)}
            for problem in problems
        ],
    }


def _given_notebook(data: object) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ApiError(400, "'notebook' must be an object with a 'cells' list")
    cells: list[dict[str, Any]] = []
    for index, cell in enumerate(data["cells"]):
        if not isinstance(cell, dict):
            raise ApiError(400, f"notebook cell {index} must be an object")
        source = cell.get("source", "")
        cells.append(
            {
                "cell_type": str(cell.get("cell_type", "code")),
                "source": "".join(map(str, source)) if isinstance(source, list) else str(source),
                "metadata": cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {},
            }
        )
    metadata = data.get("metadata")
    return {"nbformat": 4, "metadata": metadata if isinstance(metadata, dict) else {}, "cells": cells}


class CellsHandler(CellpipeHandler):
    @web.authenticated
    @authorized(action="read")
    async def post(self) -> None:
        body = self.body({"path": str}, {"notebook": dict})
        given = body["path"]
        path = resolve_notebook(self.service.root, given)
        unsaved = _given_notebook(body["notebook"]) if "notebook" in body else None

        def read() -> dict[str, Any]:
            return cells_view(unsaved if unsaved is not None else load(path), given)

        self.write_json({"path": given, **await self.convert(read)})


class CellEditHandler(CellpipeHandler):
    @web.authenticated
    @authorized(action="read")  # computes new metadata; the browser writes it into its own notebook
    async def post(self) -> None:
        body = self.body(
            {"tags": list, "values": dict},
            {"cellpipe": dict, "target": str, "path": str, "cell": int},
        )
        target = body.get("target", "keep")
        if target not in TARGETS:
            raise ApiError(400, f"'target' must be one of {', '.join(TARGETS)}, not {target!r}")
        unknown = sorted(set(body["values"]) - set(cellsettings.FIELDS))
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0]!r} (fields: {', '.join(cellsettings.FIELDS)})")
        values = {key: str(value) for key, value in body["values"].items() if value is not None}
        name, index = body.get("path", "notebook"), body.get("cell", 0)
        edited = cellsettings.edit(
            name, index, [str(t) for t in body["tags"]], body.get("cellpipe"), values, target
        )
        problems = [
            {**problem.to_json(), "field": cellsettings.field_of(problem.tag)} for problem in edited.problems
        ]
        self.write_json({"tags": edited.tags, "cellpipe": edited.cellpipe, "problems": problems})


class FieldsHandler(CellpipeHandler):
    """The form's fields: keys, labels and kinds, from the one vocabulary in Python."""

    @web.authenticated
    @authorized(action="read")
    async def get(self) -> None:
        fields = [
            {"key": key, "label": cellsettings.LABELS[key], "kind": kind}
            for key, kind in cellsettings.FIELDS.items()
        ]
        self.write_json({"fields": fields, "roles": list(cellsettings.ROLES)})


HANDLERS: list[tuple[str, type]] = [
    ("cells", CellsHandler),
    ("cells/edit", CellEditHandler),
    ("fields", FieldsHandler),
]
