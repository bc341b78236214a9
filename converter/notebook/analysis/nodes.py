"""Reading names and literals out of AST nodes (a call's arguments, an access path's root)."""

from __future__ import annotations

import ast
from collections.abc import Collection


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _namespace_kind(node: ast.expr) -> str | None:
    """'globals' for `globals()`, 'locals' for `locals()`/`vars()`, else None."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and not node.args
        and not node.keywords
        and node.func.id in ("globals", "locals", "vars")
    ):
        return "globals" if node.func.id == "globals" else "locals"
    return None


def _string(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _argument(node: ast.Call, index: int, keywords: Collection[str]) -> ast.expr | None:
    if index < len(node.args) and not any(isinstance(a, ast.Starred) for a in node.args[: index + 1]):
        return node.args[index]
    return next((k.value for k in node.keywords if k.arg is not None and k.arg in keywords), None)
