"""The notebook's JSON shape, checked before anything reads it.

A notebook is hand-editable JSON, and what tools write is not always what nbformat's schema says:
``"tags": "step:a"`` (a string, which would be read one letter at a time), ``"tags": [1, null]``,
``"source": 12345``, a cell that is a list, metadata that is a string. Each such problem is a
validation error naming the cell (exit 2 on the command line, a 422 from the REST API), reported
all at once, and the reader's later stages only ever see the shapes they expect. Only what cellpipe
reads is checked (cells, their type, source, metadata and tags, the notebook's metadata); outputs
and other keys are left alone, as papermill leaves them.
"""

from __future__ import annotations

from typing import Any

from converter.notebook.drafts import Report


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def check_structure(report: Report, nb: object) -> bool:
    """Report every structural problem of `nb`; True when the reader can go on with it."""
    if not isinstance(nb, dict):
        report.error(None, None, f"not a Jupyter notebook: the file holds {_kind(nb)}, not a JSON object")
        return False
    sound = True
    metadata = nb.get("metadata", {})
    if not isinstance(metadata, dict):
        report.error(None, "metadata", f"the notebook's metadata must be an object, not {_kind(metadata)}")
        sound = False
    else:
        for key in ("kernelspec", "language_info"):
            value = metadata.get(key)
            if value is not None and not isinstance(value, dict):
                report.error(None, f"metadata.{key}", f"metadata.{key} must be an object, not {_kind(value)}")
                sound = False
    cells = nb.get("cells")
    if not isinstance(cells, list):
        found = "no 'cells' list" if cells is None else f"'cells' is {_kind(cells)}, not a list"
        report.error(None, "cells", f"not a Jupyter notebook: {found}")
        return False
    for index, cell in enumerate(cells):
        sound = _check_cell(report, index, cell) and sound
    return sound


def _check_cell(report: Report, index: int, cell: Any) -> bool:
    if not isinstance(cell, dict):
        report.error(index, None, f"a cell must be a JSON object, not {_kind(cell)}")
        return False
    sound = True
    cell_type = cell.get("cell_type")
    if not isinstance(cell_type, str):
        report.error(index, "cell_type", f"cell_type must be a string such as 'code', not {_kind(cell_type)}")
        sound = False
    source = cell.get("source", "")
    if not isinstance(source, str) and not (
        isinstance(source, list) and all(isinstance(s, str) for s in source)
    ):
        report.error(index, "source", f"source must be a string or a list of strings, not {_kind(source)}")
        sound = False
    metadata = cell.get("metadata", {})
    if not isinstance(metadata, dict):
        report.error(index, "metadata", f"the cell's metadata must be an object, not {_kind(metadata)}")
        return False
    tags = metadata.get("tags", [])
    if isinstance(tags, str):
        report.error(
            index,
            "tags",
            f"tags must be a list of strings, not a string ({tags[:40]!r}); write [{tags[:40]!r}]",
        )
        sound = False
    elif not isinstance(tags, list):
        report.error(index, "tags", f"tags must be a list of strings, not {_kind(tags)}")
        sound = False
    else:
        for position, tag in enumerate(tags):
            if not isinstance(tag, str):
                report.error(index, "tags", f"tag {position + 1} is {_kind(tag)}: tags must be strings")
                sound = False
    return sound
