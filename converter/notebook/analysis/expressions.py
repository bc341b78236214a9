"""Expressions: names read, short-circuits, comprehensions, calls (exec, magics, effects)."""

from __future__ import annotations

import ast
import warnings

from converter.notebook.analysis.flow import _Flow
from converter.notebook.analysis.magics import _Magics
from converter.notebook.analysis.nodes import _argument, _namespace_kind, _string
from converter.notebook.analysis.scopes import _FunctionFrame, _nonclass
from converter.notebook.analysis.transform import _PARSE_ERRORS


class _Expressions(_Flow, _Magics):
    """Expressions and calls."""

    def _expr(self, node: ast.expr) -> None:
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self._read(node.id)
        elif isinstance(node, ast.Constant):
            pass
        elif isinstance(node, ast.Call):
            self._call(node)
        elif isinstance(node, ast.BinOp):  # iteratively: long `a + b + ...` chains are left-deep
            rights = []
            while isinstance(node, ast.BinOp):
                rights.append(node.right)
                node = node.left
            self._expr(node)
            for right in reversed(rights):
                self._expr(right)
        elif isinstance(node, ast.BoolOp):
            self._expr(node.values[0])
            self._conditional += 1
            for value in node.values[1:]:
                self._expr(value)
            self._conditional -= 1
        elif isinstance(node, ast.IfExp):
            self._expr(node.test)
            self._conditional += 1
            self._expr(node.body)
            self._expr(node.orelse)
            self._conditional -= 1
        elif isinstance(node, ast.NamedExpr):
            self._expr(node.value)
            frame = self._frame
            while isinstance(frame, _FunctionFrame) and frame.comprehension:
                frame = frame.parent  # a walrus in a comprehension binds in the enclosing scope
            assert isinstance(node.target, ast.Name)
            self._bind(node.target.id, frame=frame)
        elif isinstance(node, ast.Lambda):
            self._apply(self._lambda(node), _nonclass(self._frame))
        elif isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            self._comprehension(node)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self._expr(child)
                elif isinstance(child, ast.keyword):
                    self._expr(child.value)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        generators = node.generators
        self._expr(generators[0].iter)  # evaluated in the enclosing scope
        frame = _FunctionFrame(self._frame, comprehension=True)
        self._conditional += 1
        with self._inside(frame):
            for index, generator in enumerate(generators):
                if index:
                    self._expr(generator.iter)
                self._target(generator.target)
                for condition in generator.ifs:
                    self._expr(condition)
            if isinstance(node, ast.DictComp):
                self._expr(node.key)
                self._expr(node.value)
            else:
                self._expr(node.elt)
        self._conditional -= 1
        self._apply(frame.close(), _nonclass(self._frame))

    def _call(self, node: ast.Call) -> None:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Call)
            and isinstance(func.value.func, ast.Name)
            and func.value.func.id == "get_ipython"
            and not func.value.args
        ):
            self.uses_ipython = True
            texts = [_string(a) for a in node.args]
            strings = [t for t in texts if t is not None]
            if not node.keywords and len(strings) == len(texts) and self._ipython(func.attr, strings, node):
                return
            if func.attr in ("run_line_magic", "run_cell_magic"):
                self.opaque = True  # a magic we cannot read statically
        self._expr(func)
        for arg in node.args:
            self._expr(arg)
        for keyword in node.keywords:
            self._expr(keyword.value)
        if isinstance(func, ast.Name):
            self._call_effects(node, func.id, None)
        elif isinstance(func, ast.Attribute):
            self._call_effects(node, func.attr, func.value)

    def _call_effects(self, node: ast.Call, name: str, receiver: ast.expr | None) -> None:
        if receiver is None and name in ("exec", "eval"):
            self._exec(node, name)
        if name in ("import_module", "__import__"):
            module = _string(_argument(node, 0, ("name",)))
            if module and not module.startswith("."):
                self.modules.add(module.split(".")[0])
        kind = None if receiver is None else _namespace_kind(receiver)
        if kind is not None:
            self._namespace_call(kind, name, node)
        else:
            self._mutation_effects(node, name, receiver)
        self._file_paths(node, name, receiver)

    def _namespace_call(self, kind: str, method: str, node: ast.Call) -> None:
        if method == "update":
            if len(node.args) == 1 and isinstance(node.args[0], ast.Dict) and not node.keywords:
                for key in node.args[0].keys:
                    self._namespace_bind(kind, _string(key))
            elif not node.args and all(k.arg for k in node.keywords):
                for keyword in node.keywords:
                    self._namespace_bind(kind, keyword.arg)
            else:
                self._namespace_bind(kind, None)
        elif method in ("setdefault", "__setitem__") and node.args:
            self._namespace_bind(kind, _string(node.args[0]))

    def _exec(self, node: ast.Call, kind: str) -> None:
        if not node.args:
            return
        namespace = _argument(node, 1, ("globals",))
        if namespace is not None and _namespace_kind(namespace) is None:
            return  # runs in a namespace of its own
        code = _string(node.args[0])
        try:
            if code is None:
                raise ValueError("not a literal")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(code, mode="exec" if kind == "exec" else "eval")
        except _PARSE_ERRORS:
            self.opaque = True
            return
        if isinstance(tree, ast.Module):
            self.stmts(tree.body)
        elif isinstance(tree, ast.Expression):
            self._expr(tree.body)
