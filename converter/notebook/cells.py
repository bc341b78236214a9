"""Code cells as the reader sees them: tags and metadata.cellpipe merged, code analysed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converter.notebook import tags
from converter.notebook.analysis import CellAnalysis, CellSyntaxError, analyze_cell
from converter.notebook.drafts import Cell, Report


def parse_cells(report: Report, nb: Mapping[str, Any]) -> list[Cell]:
    cells: list[Cell] = []
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        metadata = cell.get("metadata", {})
        cell_tags = tags.parse_tags(report.notebook, index, list(metadata.get("tags", [])), report.problems)
        if "cellpipe" in metadata:
            apply_structured(report, cell_tags, metadata["cellpipe"])
        source = cell.get("source", "")
        if isinstance(source, list):  # as nbformat allows (check_structure made sure of the strings)
            source = "".join(source)
        if cell_tags.role == "skip":
            continue
        try:
            analysis: CellAnalysis | None = analyze_cell(source)
        except CellSyntaxError as exc:
            line = f" (line {exc.lineno})" if exc.lineno else ""
            analysis = None
            message = f"syntax error: {exc.message}{line}"
            report.deferred.append((Cell(index, source, cell_tags, None), message))
        cells.append(Cell(index, source, cell_tags, analysis))
    return cells


def apply_structured(report: Report, cell: tags.CellTags, data: Any) -> None:
    settings, other = tags.parse_structured(report.notebook, cell.index, data, report.problems)
    for key, what in _conflicts(cell.settings, settings):
        report.warn(
            cell.index,
            f"metadata.cellpipe.{key}",
            f"tags and metadata.cellpipe disagree on {what}; metadata.cellpipe wins",
        )
    cell.structured = settings
    if "step" in other:
        name = str(other["step"])
        if (why := tags.check_step_name(name)) is not None:
            report.error(cell.index, "metadata.cellpipe.step", why)
        else:
            if cell.step is not None and cell.step != name:
                report.warn(
                    cell.index,
                    "metadata.cellpipe.step",
                    f"tags name step {cell.step!r}, metadata.cellpipe says {name!r}; metadata wins",
                )
            cell.step = name
    if "after" in other:
        after = other["after"]
        names = [after] if isinstance(after, str) else after
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            report.error(
                cell.index, "metadata.cellpipe.after", "after must be a step name or a list of names"
            )
        else:
            cell.after.extend(n for n in names if n not in cell.after)
    if "role" in other:
        role = tags.ROLE_TAGS.get(str(other["role"]))
        if role is None:
            report.error(
                cell.index,
                "metadata.cellpipe.role",
                "role must be one of imports, functions, parameters, metrics, skip",
            )
        else:
            cell.role = role
    if isinstance(other.get("search"), dict):
        cell.search.update({str(k): str(v) for k, v in other["search"].items()})


_USER_KEYS = {"cpu_request": "cpu", "memory_request": "memory", "timeout_seconds": "timeout"}


def _conflicts(tagged: tags.Settings, structured: tags.Settings) -> list[tuple[str, str]]:
    """(setting as users write it, what disagrees) where both forms set different values.

    List settings accumulate, so they only disagree when both give the same key different values.
    """
    found: list[tuple[str, str]] = []
    for key in sorted(set(tagged) & set(structured)):
        user_key = _USER_KEYS.get(key, key)
        if key in tags.KEYED_SETTINGS:
            from_tags = dict(tagged[key])
            for name, value in structured[key]:
                if name in from_tags and from_tags[name] != value:
                    found.append((user_key, f"{user_key.replace('_', '-')} {name}"))
        elif key not in tags.LIST_SETTINGS and tagged[key] != structured[key]:
            found.append((user_key, user_key.replace("_", "-")))
    return found
