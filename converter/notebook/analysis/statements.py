"""Statements that bind names: definitions, assignments, deletions, imports."""

from __future__ import annotations

import ast
from collections.abc import Iterable

from converter.notebook.analysis.mutations import _Mutations
from converter.notebook.analysis.nodes import _namespace_kind, _string
from converter.notebook.analysis.results import _FunctionInfo
from converter.notebook.analysis.scopes import _ClassFrame, _FunctionFrame


class _Statements(_Mutations):
    """Statement dispatch and the statements that bind names."""

    def stmts(self, body: Iterable[ast.stmt]) -> None:
        for node in body:
            handler = getattr(self, "_s_" + type(node).__name__, None)
            if handler is None:
                self._generic(node)
            else:
                handler(node)

    def _generic(self, node: ast.AST) -> None:
        """Statements of later Pythons (`type X = ...`): names stored are bound, the rest read."""
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Name) and not isinstance(child.ctx, ast.Load):
                self._bind(child.id)
            elif isinstance(child, ast.expr):
                self._expr(child)
            elif isinstance(child, ast.stmt):
                self.stmts([child])
            elif isinstance(child, ast.keyword):
                self._expr(child.value)

    def _s_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self._expr(decorator)
        self._defaults(node.args)
        if not self._lazy_annotations:
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            for annotation in [a.annotation for a in every if a is not None] + [node.returns]:
                if annotation is not None:
                    self._expr(annotation)
        frame = _FunctionFrame(self._frame)
        with self._inside(frame):
            self._params(node.args)
            self.stmts(node.body)
        self._bind(node.name, frame.close())

    _s_AsyncFunctionDef = _s_FunctionDef

    def _defaults(self, args: ast.arguments) -> None:
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None:
                self._expr(default)

    def _params(self, args: ast.arguments) -> None:
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None:
                self._bind(arg.arg)
        frame = self._frame
        if isinstance(frame, _FunctionFrame):
            frame.params.update(a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs])
            frame.positional = [a.arg for a in [*args.posonlyargs, *args.args]]
            frame.vararg = args.vararg.arg if args.vararg else None
            frame.kwarg = args.kwarg.arg if args.kwarg else None
            frame.params.update(n for n in (frame.vararg, frame.kwarg) if n)

    def _lambda(self, node: ast.Lambda) -> _FunctionInfo:
        self._defaults(node.args)
        frame = _FunctionFrame(self._frame)
        with self._inside(frame):
            self._params(node.args)
            self._expr(node.body)
        return frame.close()

    def _s_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self._expr(expr)
        frame = _ClassFrame(self._frame)
        with self._inside(frame):
            self.stmts(node.body)
        info = _FunctionInfo(frozenset(frame.reads), frozenset(frame.mutates), frozenset(frame.assigns))
        self._bind(node.name, info)

    def _s_Return(self, node: ast.Return) -> None:
        if node.value is not None:
            self._expr(node.value)
        self._dead()

    def _s_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._delete(target)

    def _delete(self, node: ast.expr) -> None:
        if isinstance(node, ast.Name):
            if not isinstance(self._frame, _FunctionFrame):
                self._read(node.id)  # must exist
            self._unbind(node.id)
        elif isinstance(node, ast.Tuple | ast.List):
            for element in node.elts:
                self._delete(element)
        elif isinstance(node, ast.Attribute | ast.Subscript):
            self._through(node)
        else:
            self._expr(node)

    def _s_Assign(self, node: ast.Assign) -> None:
        if isinstance(node.value, ast.Lambda) and all(isinstance(t, ast.Name) for t in node.targets):
            info = self._lambda(node.value)
            for target in node.targets:
                assert isinstance(target, ast.Name)
                self._bind(target.id, info)
            return
        self._expr(node.value)
        for target in node.targets:
            self._target(target)

    def _s_AugAssign(self, node: ast.AugAssign) -> None:
        self._expr(node.value)
        target = node.target
        if isinstance(target, ast.Name):
            self._read(target.id)
            self._bind(target.id)
        else:
            self._through(target)

    def _s_AnnAssign(self, node: ast.AnnAssign) -> None:
        target = node.target
        if node.value is not None:
            if isinstance(node.value, ast.Lambda) and isinstance(target, ast.Name):
                self._bind(target.id, self._lambda(node.value))
            else:
                self._expr(node.value)
                self._target(target)
        elif isinstance(target, ast.Name):
            if isinstance(self._frame, _FunctionFrame):
                self._bind(target.id)  # `x: int` makes x local to a function
        else:
            self._expr(target.value)
        # Python evaluates annotations of module and class bodies, not those of function locals.
        if not self._lazy_annotations and not isinstance(self._frame, _FunctionFrame):
            self._expr(node.annotation)

    def _target(self, node: ast.expr) -> None:
        if isinstance(node, ast.Name):
            self._bind(node.id)
        elif isinstance(node, ast.Tuple | ast.List):
            for element in node.elts:
                self._target(element)
        elif isinstance(node, ast.Starred):
            self._target(node.value)
        elif isinstance(node, ast.Subscript) and (kind := _namespace_kind(node.value)) is not None:
            self._expr(node.slice)
            self._namespace_bind(kind, _string(node.slice))
        elif isinstance(node, ast.Attribute | ast.Subscript):
            self._through(node)
        else:
            self._expr(node)

    def _s_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self._expr(item.context_expr)
            if item.optional_vars is not None:
                self._target(item.optional_vars)
        self.stmts(node.body)

    _s_AsyncWith = _s_With

    def _s_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            self.modules.add(top)
            self._bind(alias.asname or top, import_=True)

    def _s_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")
        if node.level == 0 and node.module:
            if module == "__future__":
                self._lazy_annotations |= any(a.name == "annotations" for a in node.names)
            else:
                self.modules.add(module.split(".")[0])
        for alias in node.names:
            if alias.name == "*":
                self.star_imports.add(module)
                self.opaque = True
            else:
                self._bind(alias.asname or alias.name, import_=True)

    def _s_Global(self, node: ast.Global) -> None:
        if isinstance(self._frame, _FunctionFrame):
            self._frame.declared_global.update(node.names)

    def _s_Nonlocal(self, node: ast.Nonlocal) -> None:
        if isinstance(self._frame, _FunctionFrame):
            self._frame.declared_nonlocal.update(node.names)
            self._frame.loaded.update(node.names)  # resolved in the enclosing function

    def _s_Expr(self, node: ast.Expr) -> None:
        self._expr(node.value)

    def _s_Pass(self, node: ast.Pass) -> None:
        pass
