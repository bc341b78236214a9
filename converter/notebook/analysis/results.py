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
class CallSite:
    """A call's arguments by the root name of each (`f(df, d["k"], key=x)`: df, d, key x)."""

    positional: tuple[str | None, ...]  # None: not rooted in a name of interest
    keywords: tuple[tuple[str | None, str | None], ...]  # (keyword, None for **mapping; root)
    starred: bool = False  # a *args among them: positions are unknown

    def roots(self) -> frozenset[str]:
        return frozenset(r for r in [*self.positional, *(r for _, r in self.keywords)] if r is not None)


@dataclass(frozen=True)
class ArgumentEffects:
    """Which of a function's parameters its body may change in place, and how calls bind them."""

    positional: tuple[str, ...]  # positional parameters in order
    changed: frozenset[str]  # parameters that may be changed in place
    vararg: str | None = None
    kwarg: str | None = None

    def changed_by(self, call: CallSite) -> frozenset[str]:
        """The root names of the arguments of `call` that may be changed."""
        found = set()
        for index, root in enumerate(call.positional):
            if index < len(self.positional) and not call.starred:
                hit = self.positional[index] in self.changed
            else:
                hit = call.starred or self.vararg in self.changed
            if root is not None and hit:
                found.add(root)
        for key, root in call.keywords:
            hit = (
                key is None
                or key in self.changed
                or (key not in self.positional and self.kwarg in self.changed)
            )
            if root is not None and hit:
                found.add(root)
        return frozenset(found)

    def merge(self, other: ArgumentEffects | None) -> ArgumentEffects:
        """Either definition may be the one called (defined on some paths only)."""
        if other is None:
            return self
        return ArgumentEffects(self.positional, self.changed | other.changed, self.vararg, self.kwarg)


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
    # Names from outside the cell it calls a method on whose effect is unknown (not known to change
    # the receiver, nor known to leave it alone): the reader treats them as changed.
    may_mutate: frozenset[str] = frozenset()
    # Reads or writes files it cannot name: a computed path, a shell command, a script magic.
    paths_unknown: bool = False
    calls: Mapping[str, tuple[CallSite, ...]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )  # function defined outside the cell -> its calls (arguments: names from outside the cell)
    mutating_functions: Mapping[str, ArgumentEffects] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )  # functions of the cell that may change an argument in place -> which


class _FunctionInfo(NamedTuple):
    """What calling a function does to the globals (free names read, mutated, bound)."""

    reads: frozenset[str]
    mutates: frozenset[str]
    assigns: frozenset[str]
    arguments: ArgumentEffects | None = None  # the arguments it may change in place (None: none)
