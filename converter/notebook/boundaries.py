"""Values that cannot cross a step boundary: open files, generators, sockets, connections, locks.

A value passed to a later step is saved by its step and loaded by the next; some objects only make
sense in the process that made them and cannot be saved. `validate` warns where it can tell, at the
cell and variable: the name is bound (last, in its step) from a call known to make such an object
(``open(...)``, ``sqlite3.connect(...)``, ``socket.socket()``, ``threading.Lock()``...), a generator
expression, a call to a generator function the notebook defines, or a ``with ... as name`` (the
object is closed once the block ends). At run time the step program names the same variable.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping

from converter.notebook.drafts import Cell, Report, StepDraft, cell_tag

# Last part of a call's dotted name -> what the object is.
_MAKERS: Mapping[str, str] = {
    "open": "an open file",
    "TemporaryFile": "an open file",
    "NamedTemporaryFile": "an open file",
    "urlopen": "an open connection",
    "socket": "a socket",
    "create_connection": "a socket",
    "connect": "a connection",
    "Lock": "a lock",
    "RLock": "a lock",
    "Semaphore": "a lock",
    "BoundedSemaphore": "a lock",
    "Condition": "a lock",
    "Popen": "a running process",
}


def warn_unpassable(
    report: Report, drafts: Iterable[StepDraft], step_inputs: Mapping[str, Mapping[str, str]]
) -> None:
    """Warn on every value a later step reads that its producer binds to something unpassable."""
    drafts = list(drafts)
    generators = _generator_functions(c for d in drafts for c in d.cells)
    readers: dict[tuple[str, str], list[str]] = {}
    for consumer, inputs in step_inputs.items():
        for name, producer in inputs.items():
            readers.setdefault((producer, name), []).append(consumer)
    for draft in drafts:
        for (producer, name), consumers in sorted(readers.items()):
            if producer != draft.name:
                continue
            found = _last_binding(draft.cells, name, generators)
            if found is None:
                continue
            cell, what = found
            report.warn(
                cell.index,
                cell_tag(cell.tags),
                f"step {draft.name!r} passes {name!r} to {', '.join(map(repr, sorted(consumers)))}, but "
                f"{name!r} holds {what}, which cannot cross a step boundary: use it in the step that makes "
                "it, or pass what it holds (its contents, a path, the settings to reopen it)",
            )


def _generator_functions(cells: Iterable[Cell]) -> set[str]:
    names: set[str] = set()
    for cell in cells:
        for node in _body(cell):
            if isinstance(node, ast.FunctionDef) and any(
                isinstance(n, ast.Yield | ast.YieldFrom) for n in ast.walk(node)
            ):
                names.add(node.name)
    return names


def _body(cell: Cell) -> list[ast.stmt]:
    if cell.analysis is None:
        return []
    try:
        return ast.parse(cell.analysis.python).body
    except SyntaxError:
        return []


def _last_binding(cells: list[Cell], name: str, generators: set[str]) -> tuple[Cell, str] | None:
    """The cell and kind of the step's last top-level binding of `name`, when it is unpassable."""
    found: tuple[Cell, str] | None = None
    for cell in cells:
        for node in _body(cell):
            kind = _binding(node, name, generators)
            if kind is not None:
                found = (cell, kind) if kind else None
    return found


def _binding(node: ast.stmt, name: str, generators: set[str]) -> str | None:
    """What a statement binds `name` to: an unpassable kind, "" for anything else, None if it does not."""
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
        return _kind(node.value, generators)
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
        return _kind(node.value, generators) if node.value is not None else None
    if isinstance(node, ast.With | ast.AsyncWith):
        for item in node.items:
            if isinstance(item.optional_vars, ast.Name) and item.optional_vars.id == name:
                what = _kind(item.context_expr, generators)
                return f"{what or 'an object'} closed when its with block ended"
    if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Import | ast.ImportFrom):
        bound = {node.name} if isinstance(node, ast.FunctionDef | ast.ClassDef) else set()
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound = {(a.asname or a.name).split(".")[0] for a in node.names}
        return "" if name in bound else None
    return None


def _kind(value: ast.expr | None, generators: set[str]) -> str:
    if isinstance(value, ast.GeneratorExp):
        return "a generator"
    if isinstance(value, ast.Call):
        func = value.func
        last = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if isinstance(func, ast.Name) and last in generators:
            return "a generator"
        return _MAKERS.get(last, "")
    return ""
