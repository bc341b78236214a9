"""Branches and loops at module level: definite-assignment flow analysis."""

from __future__ import annotations

import ast

from converter.notebook.analysis.scopes import _irrefutable, _Loop, _loop_bindings, _State
from converter.notebook.analysis.statements import _Statements


class _Flow(_Statements):
    """`for`, `while`, `if`, `try`, `match`, and the statements that end a path."""

    def _s_For(self, node: ast.For | ast.AsyncFor) -> None:
        self._expr(node.iter)
        self._loop(node.body, node.orelse, node.target)

    _s_AsyncFor = _s_For

    def _s_While(self, node: ast.While) -> None:
        self._expr(node.test)
        self._loop(node.body, node.orelse, None)

    def _loop(self, body: list[ast.stmt], orelse: list[ast.stmt], target: ast.expr | None) -> None:
        if self._frame is not self._module:
            if target is not None:
                self._target(target)
            self.stmts(body)
            self.stmts(orelse)
            return
        entry = self._state.copy()
        carried = entry.carried
        self._state.carried = carried | _loop_bindings([*body, *([target] if target else [])])
        self._branch += 1
        loop = _Loop(self._branch)
        self._loops.append(loop)
        if target is not None:
            self._target(target)
        self.stmts(body)
        self._loops.pop()
        normal = _State.join([entry, self._state, *loop.continues])  # zero or more full iterations
        if orelse:
            self._state = normal
            self.stmts(orelse)
            normal = self._state
        self._branch -= 1
        self._state = _State.join([normal, *loop.breaks])
        self._state.carried = carried

    def _s_Break(self, node: ast.Break) -> None:
        if self._frame is self._module and self._loops:
            self._loops[-1].breaks.append(self._state.copy())
        self._dead()

    def _s_Continue(self, node: ast.Continue) -> None:
        if self._frame is self._module and self._loops:
            self._loops[-1].continues.append(self._state.copy())
        self._dead()

    def _s_If(self, node: ast.If) -> None:
        self._expr(node.test)
        if self._frame is not self._module:
            self.stmts(node.body)
            self.stmts(node.orelse)
            return
        entry = self._state.copy()
        self._branch += 1
        self.stmts(node.body)
        after_body, self._state = self._state, entry
        self.stmts(node.orelse)
        self._branch -= 1
        self._state = _State.join([after_body, self._state])

    def _s_Try(self, node: ast.Try) -> None:
        module = self._frame is self._module
        entry = self._state.copy()
        self._branch += 1
        self.stmts(node.body)
        after_body = self._state.copy()
        self.stmts(node.orelse)
        ends = [self._state]
        for handler in node.handlers:
            if module:  # the exception may come from anywhere in the body
                maybe = entry.maybe | after_body.maybe
                self._state = _State(set(entry.definite), maybe, entry.carried)
            if handler.type is not None:
                self._expr(handler.type)
            if handler.name:
                self._bind(handler.name)
            self.stmts(handler.body)
            if handler.name and module:
                self._unbind(handler.name)  # Python deletes the `as` name after the handler
            ends.append(self._state)
        self._branch -= 1
        if module:
            self._state = _State.join(ends)
        self.stmts(node.finalbody)

    _s_TryStar = _s_Try

    def _s_Match(self, node: ast.Match) -> None:
        self._expr(node.subject)
        module = self._frame is self._module
        entry = self._state.copy()
        ends = []
        self._branch += 1
        for case in node.cases:
            if module:
                self._state = entry.copy()
            self._pattern(case.pattern)
            if case.guard is not None:
                self._expr(case.guard)
            self.stmts(case.body)
            ends.append(self._state)
        self._branch -= 1
        if module:
            if not any(_irrefutable(case) for case in node.cases):
                ends.append(entry)
            self._state = _State.join(ends)

    def _pattern(self, node: ast.pattern) -> None:
        if isinstance(node, ast.MatchValue):
            self._expr(node.value)
        elif isinstance(node, ast.MatchSequence | ast.MatchOr):
            for pattern in node.patterns:
                self._pattern(pattern)
        elif isinstance(node, ast.MatchMapping):
            for key in node.keys:
                self._expr(key)
            for pattern in node.patterns:
                self._pattern(pattern)
            if node.rest:
                self._bind(node.rest)
        elif isinstance(node, ast.MatchClass):
            self._expr(node.cls)
            for pattern in [*node.patterns, *node.kwd_patterns]:
                self._pattern(pattern)
        elif isinstance(node, ast.MatchStar | ast.MatchAs):
            if isinstance(node, ast.MatchAs) and node.pattern is not None:
                self._pattern(node.pattern)
            if node.name:
                self._bind(node.name)

    def _s_Raise(self, node: ast.Raise) -> None:
        for expr in (node.exc, node.cause):
            if expr is not None:
                self._expr(expr)
        self._dead()
