"""The parameters cell: NAME = literal lines -> pipeline parameters (type, default, search space)."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

from converter.model import Parameter, ParameterType
from converter.notebook.drafts import Cell, Report

_PARAM_TYPES: Mapping[type, ParameterType] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    list: "list",
    dict: "dict",
}
_SEARCH_COMMENT = re.compile(r"#\s*search:\s*(.+?)\s*$")


def parameters(report: Report, cells: list[Cell]) -> tuple[Parameter, ...]:
    found: dict[str, Parameter] = {}
    for cell in cells:
        if cell.analysis is None:
            continue
        try:
            module = ast.parse(cell.analysis.python)
        except SyntaxError:
            continue
        lines = cell.source.splitlines()
        for node in module.body:
            target, value = _literal_assignment(node)
            if target is None:
                report.error(
                    cell.index,
                    "parameters",
                    f"line {node.lineno}: a parameters cell holds only NAME = literal assignments",
                )
                continue
            try:
                default = ast.literal_eval(value) if value is not None else None
            except ValueError:
                report.error(
                    cell.index,
                    "parameters",
                    f"{target} = ... is not a literal (int, float, bool, str, list or dict); "
                    "parameter values travel as KFP parameters, not code",
                )
                continue
            kind = "str" if default is None else _PARAM_TYPES.get(type(default))
            if kind is None:
                report.error(
                    cell.index,
                    "parameters",
                    f"{target} has type {type(default).__name__}; "
                    "use int, float, bool, str, list, dict or None",
                )
                continue
            line = lines[node.lineno - 1] if node.lineno - 1 < len(lines) else ""
            search = _SEARCH_COMMENT.search(line)
            found[target] = Parameter(
                target,
                kind,
                default,
                cell.index,
                search=cell.tags.search.get(target) or (search.group(1) if search else None),
            )
    return tuple(found.values())


def _literal_assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return node.target.id, node.value
    return None, None
