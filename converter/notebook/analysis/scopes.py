"""Scopes and flow state: which frame a name resolves in, what is bound at a program point.

`_Scopes` is the analyser's base: the state of one pass and the operations on names (read, bind,
unbind, mutate, apply a function's call-time effects). The other modules add statements,
expressions, mutations, file paths and magics on top of it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from converter.notebook.analysis.nodes import _root_name
from converter.notebook.analysis.results import BUILTIN_NAMES, ArgumentEffects, CallSite, _FunctionInfo


class _State:
    """Module-level names bound at a program point: on every path, on some path."""

    __slots__ = ("carried", "dead", "definite", "maybe")

    def __init__(
        self,
        definite: set[str] | None = None,
        maybe: set[str] | None = None,
        carried: frozenset[str] = frozenset(),
        dead: bool = False,
    ) -> None:
        self.definite = definite if definite is not None else set()
        self.maybe = maybe if maybe is not None else set()
        self.carried = carried  # bound somewhere in the enclosing loops' bodies
        self.dead = dead  # after raise/break/continue: this path does not reach what follows

    def copy(self) -> _State:
        return _State(set(self.definite), set(self.maybe), self.carried, self.dead)

    @staticmethod
    def join(states: Sequence[_State]) -> _State:
        live = [s for s in states if not s.dead] or list(states)
        definite = set.intersection(*(s.definite for s in live))
        maybe = set.union(*(s.maybe for s in live))
        return _State(definite, maybe, states[0].carried, dead=not any(not s.dead for s in states))


class _ModuleFrame:
    """The cell's global namespace; its flow-sensitive state lives on the analyser."""

    __slots__ = ()


class _ClassFrame:
    """A class body: runs at once, in order; its methods do not see its names."""

    __slots__ = ("assigns", "bound", "mutates", "parent", "reads")

    def __init__(self, parent: _Frame) -> None:
        self.parent = parent
        self.bound: set[str] = set()
        # call-time effects of the methods (and nested classes): the class's _FunctionInfo
        self.reads: set[str] = set()
        self.mutates: set[str] = set()
        self.assigns: set[str] = set()


class _FunctionFrame:
    """A def, lambda, comprehension or %timeit body: Python decides locality for the whole body."""

    __slots__ = (
        "bound", "comprehension", "declared_global", "declared_nonlocal", "global_assigns",
        "kwarg", "loaded", "mutated", "params", "parent", "positional", "vararg",
    )  # fmt: skip

    def __init__(self, parent: _Frame, comprehension: bool = False) -> None:
        self.parent = parent
        self.comprehension = comprehension
        self.bound: set[str] = set()
        self.loaded: set[str] = set()
        self.mutated: set[str] = set()
        self.declared_global: set[str] = set()
        self.declared_nonlocal: set[str] = set()
        self.global_assigns: set[str] = set()
        self.params: set[str] = set()
        self.positional: list[str] = []
        self.vararg: str | None = None
        self.kwarg: str | None = None

    def close(self) -> _FunctionInfo:
        return _FunctionInfo(
            frozenset(self.loaded - self.bound),
            frozenset(self.mutated - self.bound),
            frozenset(self.global_assigns),
            self._arguments(),
        )

    def _arguments(self) -> ArgumentEffects | None:
        changed = self.mutated & self.params
        if not changed:
            return None
        return ArgumentEffects(tuple(self.positional), frozenset(changed), self.vararg, self.kwarg)


_Frame = _ModuleFrame | _ClassFrame | _FunctionFrame


class _Loop:
    """A module-level loop being analysed: how deep its body is, the states leaving it early."""

    __slots__ = ("breaks", "continues", "level")

    def __init__(self, level: int) -> None:
        self.level = level
        self.breaks: list[_State] = []
        self.continues: list[_State] = []


def _nonclass(frame: _Frame) -> _ModuleFrame | _FunctionFrame:
    while isinstance(frame, _ClassFrame):
        frame = frame.parent
    return frame


def _loop_bindings(stmts: Iterable[ast.AST]) -> frozenset[str]:
    """Names a loop body may bind in its own scope (over-approximated; only weakens reads)."""
    names: set[str] = set()
    stack = list(stmts)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            continue
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.alias) and node.name != "*":
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        stack.extend(ast.iter_child_nodes(node))
    return frozenset(names)


def _irrefutable(case: ast.match_case) -> bool:
    def wild(pattern: ast.pattern) -> bool:
        if isinstance(pattern, ast.MatchOr):
            return any(wild(p) for p in pattern.patterns)
        return isinstance(pattern, ast.MatchAs) and pattern.pattern is None

    return case.guard is None and wild(case.pattern)


class _Scopes:
    """The state of one pass over a cell and the operations on names."""

    def __init__(self, line_base: int) -> None:
        self._module = _ModuleFrame()
        self._frame: _Frame = self._module
        self._state = _State()
        self._line_base = line_base  # original line of python line L is L + line_base
        self._conditional = 0  # inside a short-circuit operand or a comprehension: binds are maybe
        self._branch = 0  # inside a module-level branch or loop body
        self._weak = 0  # inside a $name / {expr} shell expansion
        self._lazy_annotations = False
        self._loops: list[_Loop] = []  # module-level loops being analysed, innermost last
        self._expanding: set[str] = set()
        self.strong_reads: set[str] = set()
        self.weak_reads: set[str] = set()
        self.mutates: set[str] = set()
        self.may_mutate: set[str] = set()  # see CellAnalysis.may_mutate
        self.calls: dict[str, list[CallSite]] = {}  # see CellAnalysis.calls
        self.imports: set[str] = set()
        self.modules: set[str] = set()
        self.star_imports: set[str] = set()
        self.functions: dict[str, _FunctionInfo] = {}
        self.uses_ipython = False
        self.opaque = False
        self.paths_read: set[str] = set()
        self.paths_written: set[str] = set()
        self.paths_unknown = False  # see CellAnalysis.paths_unknown

    @contextmanager
    def _inside(self, frame: _Frame) -> Iterator[None]:
        outer, self._frame = self._frame, frame
        try:
            yield
        finally:
            self._frame = outer

    def _scope_of(self, name: str, frame: _Frame | None) -> _Frame | None:
        """The frame a use of `name` resolves in, skipping class bodies; None when a class body binds it."""
        frame = frame or self._frame
        while isinstance(frame, _ClassFrame):
            if name in frame.bound:
                return None
            frame = frame.parent
        return frame

    def _read(self, name: str, frame: _Frame | None = None, weak: bool = False) -> None:
        if name == "get_ipython":
            self.uses_ipython = True
        frame = self._scope_of(name, frame)
        if frame is None:
            return
        if isinstance(frame, _FunctionFrame):
            frame.loaded.add(name)
            return
        info = self.functions.get(name)
        if info is not None and name not in self._expanding:
            self._expanding.add(name)
            self._apply(info, self._module)
            self._expanding.discard(name)
        state = self._state
        if name in state.definite or name in BUILTIN_NAMES:
            return
        if weak or self._weak or name in state.maybe or self._carried(name):
            self.weak_reads.add(name)
        else:
            self.strong_reads.add(name)

    def _carried(self, name: str) -> bool:
        """Bound by an earlier iteration of the loop we are in, at a read that iteration may skip.

        A read every iteration makes (`total = total + x`) happens first with the loop's entry
        state, so only reads nested in a condition inside the loop body count as carried.
        """
        if not self._loops or name not in self._state.carried:
            return False
        return self._branch > self._loops[-1].level or self._conditional > 0

    def _apply(self, info: _FunctionInfo, frame: _ModuleFrame | _FunctionFrame) -> None:
        """A function body runs here: at a call in module code, or where a comprehension is.

        Globals the function binds itself may be bound before it reads them: those reads are weak.
        """
        for name in sorted(info.reads):
            self._read(name, frame, weak=name in info.assigns)
        for name in info.mutates:
            self._mutate(name, frame)
        for name in info.assigns:
            self._bind_global(name, frame, definite=False)

    def _mutate(self, name: str, frame: _Frame | None = None) -> None:
        frame = self._scope_of(name, frame)
        if frame is None:
            return
        if isinstance(frame, _FunctionFrame):
            frame.mutated.add(name)
        elif name not in self._state.definite:
            self.mutates.add(name)

    def _may_mutate(self, node: ast.expr) -> None:
        """A method of unknown effect is called on `node`: its root may change (in a function: it does)."""
        root = _root_name(node)
        frame = None if root is None else self._scope_of(root, None)
        if root is None or frame is None:
            return
        if isinstance(frame, _FunctionFrame):
            frame.mutated.add(root)
        elif root not in self._state.definite:
            self.may_mutate.add(root)

    def _mutate_root(self, node: ast.expr) -> None:
        root = _root_name(node)
        if root is not None:
            self._mutate(root)

    def _bind(
        self,
        name: str,
        info: _FunctionInfo | None = None,
        frame: _Frame | None = None,
        import_: bool = False,
    ) -> None:
        frame = frame or self._frame
        if isinstance(frame, _FunctionFrame):
            if name in frame.declared_global:
                frame.global_assigns.add(name)
            elif name not in frame.declared_nonlocal:
                frame.bound.add(name)
            if info is not None:
                frame.loaded |= info.reads
                frame.mutated |= info.mutates
                frame.global_assigns |= info.assigns
        elif isinstance(frame, _ClassFrame):
            frame.bound.add(name)
            if info is not None:
                frame.reads |= info.reads
                frame.mutates |= info.mutates
                frame.assigns |= info.assigns
        else:
            self._module_bind(name, info, import_, definite=True)

    def _module_bind(self, name: str, info: _FunctionInfo | None, import_: bool, definite: bool) -> None:
        state = self._state
        state.maybe.add(name)
        if definite and not self._conditional:
            state.definite.add(name)
        replaces = not self._conditional and not self._branch
        previous = self.functions.get(name)
        if info is not None and previous is not None and not replaces:
            # Defined on some paths only: a call may reach either definition.
            self.functions[name] = _FunctionInfo(
                previous.reads | info.reads,
                previous.mutates | info.mutates,
                previous.assigns | info.assigns,
                info.arguments.merge(previous.arguments) if info.arguments else previous.arguments,
            )
        elif info is not None:
            self.functions[name] = info
        elif replaces:
            self.functions.pop(name, None)
        if import_:
            self.imports.add(name)
        elif replaces:
            self.imports.discard(name)

    def _bind_global(self, name: str, frame: _ModuleFrame | _FunctionFrame, definite: bool) -> None:
        if isinstance(frame, _FunctionFrame):
            frame.global_assigns.add(name)
        else:
            self._module_bind(name, None, False, definite)

    def _unbind(self, name: str) -> None:
        frame = self._frame
        if isinstance(frame, _FunctionFrame):
            if name in frame.declared_global:
                frame.loaded.add(name)  # deleting a global needs it to exist
            elif name not in frame.declared_nonlocal:
                frame.bound.add(name)  # `del x` makes x local, as an assignment would
        elif isinstance(frame, _ClassFrame):
            frame.bound.discard(name)
        else:
            self._state.definite.discard(name)
            self._state.maybe.discard(name)
            if not self._conditional and not self._branch:
                self.functions.pop(name, None)
                self.imports.discard(name)

    def _dead(self) -> None:
        if self._frame is self._module:
            self._state.dead = True

    def _namespace_bind(self, kind: str, key: str | None) -> None:
        """`globals()[key] = ...` (or locals()/vars() outside functions) binds a name we can see."""
        frame = _nonclass(self._frame)
        if kind == "locals" and isinstance(frame, _FunctionFrame):
            return  # writes to a function's locals() are lost
        if key is None or not key.isidentifier():
            self.opaque = True
        elif kind == "globals":
            self._bind_global(key, frame, definite=not self._conditional)
        else:
            self._bind(key)

    # Defined by the statement and expression layers.
    def stmts(self, body: Iterable[ast.stmt]) -> None:
        raise NotImplementedError

    def _expr(self, node: ast.expr) -> None:
        raise NotImplementedError
