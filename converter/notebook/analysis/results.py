"""What the analysis of a cell (or a sequence of cells) says about the global namespace."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

_KERNEL_NAMES = frozenset(
    {
        "display", "get_ipython", "In", "Out", "exit", "quit", "help", "copyright", "credits",
        "license", "_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh", "__IPYTHON__",
        "__name__", "__builtins__", "__builtin__", "__doc__", "__spec__", "__loader__", "__package__",
    }
)  # fmt: skip
BUILTIN_NAMES: frozenset[str] = frozenset(dir(builtins)) | _KERNEL_NAMES


class CellSyntaxError(Exception):
    """A cell that is not valid Python even after IPython's transforms."""

    def __init__(self, message: str, lineno: int | None) -> None:
        super().__init__(message if lineno is None else f"line {lineno}: {message}")
        self.message = message
        self.lineno = lineno  # in the cell as written, 1-based, when known

    def __reduce__(self) -> tuple[type[CellSyntaxError], tuple[str, int | None]]:
        return CellSyntaxError, (self.message, self.lineno)


def _frozen_map(items: Mapping[str, frozenset[str]]) -> Mapping[str, frozenset[str]]:
    return MappingProxyType(dict(sorted(items.items())))


@dataclass(frozen=True)
class CellAnalysis:
    """What one cell (or a sequence of cells run in order) does to the global namespace."""

    python: str  # the cell after IPython's input transformer (plain Python source)
    reads: frozenset[str]  # global names that may be read before this cell binds them
    assigns: frozenset[str]  # global names bound when the cell ends (possibly only on some paths)
    imports: frozenset[str]  # the assigns last bound by an import statement
    modules: frozenset[str]  # top-level modules imported anywhere in the cell
    mutates: frozenset[str]  # names from outside the cell it may change in place
    functions: Mapping[str, frozenset[str]] = field(hash=False)  # def/class/lambda -> call-time reads
    uses_ipython: bool  # magics, shell escapes or get_ipython(): needs an IPython shell
    star_imports: frozenset[str]  # modules imported with `from m import *`
    opaque: bool  # may bind names we cannot see (%run, exec of non-literals, star import, ...)
    paths_written: frozenset[str]
    paths_read: frozenset[str]
    # Additions beyond the reader's interface; all default to "nothing".
    weak_reads: frozenset[str] = frozenset()  # subset of reads: input if defined, never an error
    conditional_assigns: frozenset[str] = frozenset()  # subset of assigns bound on some paths only
    function_mutates: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: _frozen_map({}), hash=False
    )  # function -> global names a call may change in place (only non-empty entries)
    function_assigns: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: _frozen_map({}), hash=False
    )  # function -> names a call binds through `global` (only non-empty entries)


class _FunctionInfo(NamedTuple):
    """What calling a function does to the globals (free names read, mutated, bound)."""

    reads: frozenset[str]
    mutates: frozenset[str]
    assigns: frozenset[str]
