"""The mutation heuristic: which names from outside a cell it may change in place."""

from __future__ import annotations

import ast

from converter.notebook.analysis.scopes import _Scopes

# Methods that change their receiver in place (containers, deques, sets, estimators, arrays).
_MUTATING_METHODS = frozenset(
    {
        "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse", "update",
        "setdefault", "popitem", "add", "discard", "appendleft", "extendleft", "popleft", "rotate",
        "intersection_update", "difference_update", "symmetric_difference_update",
        "fit", "partial_fit", "fit_transform", "fit_predict", "set_params", "fill", "resize",
    }
)  # fmt: skip
# Functions that change their first argument in place.
_IN_PLACE_FUNCTIONS = frozenset(
    {
        "shuffle", "heappush", "heappop", "heapify", "heappushpop", "heapreplace",
        "fill_diagonal", "copyto", "putmask", "setattr", "delattr",
    }
)  # fmt: skip


class _Mutations(_Scopes):
    """Assignments through a name, mutating methods, in-place functions, `out=`."""

    def _through(self, node: ast.Attribute | ast.Subscript) -> None:
        """An attribute or item set or deleted through a name: reads it and may mutate its root."""
        self._expr(node.value)
        if isinstance(node, ast.Subscript):
            self._expr(node.slice)
        self._mutate_root(node.value)

    def _mutation_effects(self, node: ast.Call, name: str, receiver: ast.expr | None) -> None:
        """A call `receiver.name(...)` or `name(...)` that may change a value in place."""
        if receiver is not None and (
            name in _MUTATING_METHODS
            or any(
                k.arg == "inplace" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            )
        ):
            self._mutate_root(receiver)
        if name in _IN_PLACE_FUNCTIONS and node.args:
            self._mutate_root(node.args[0])
        for keyword in node.keywords:
            if keyword.arg == "out":
                self._mutate_root(keyword.value)
