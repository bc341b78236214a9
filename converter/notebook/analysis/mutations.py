"""The mutation heuristic: which names from outside a cell it may change in place.

A name the cell did not definitely bind itself is in ``mutates`` when the cell assigns or deletes an
item or attribute through it (``df["a"] = 1``, ``model.coef_ = w``, ``del d[k]``, ``x.a += 1``), calls a
method from ``_MUTATING_METHODS`` on it or any method with ``inplace=True`` (the receiver's root name:
``df["a"].fillna(0, inplace=True)`` mutates ``df``), passes it first to a function from
``_IN_PLACE_FUNCTIONS`` (``np.random.shuffle(x)``, ``heapq.heappush(h, v)``) or as ``out=``, or passes it
to a function of the same cell that changes one of its arguments.

What cannot be proven harmless counts too, so a later step never reads a stale value: a method not
in ``_HARMLESS_METHODS`` called on it goes in ``may_mutate``; passing it to a function defined outside
the cell goes in ``calls`` (the reader knows whether that function, from a functions cell or an
earlier step, changes its arguments; an imported one is taken as harmless). Inside a function body, a
parameter changed in any of these ways (or passed on to a function of the cell that changes it) makes
the function one that mutates its arguments (``mutating_functions``); a function the body calls that
is not defined in the cell above it is taken as harmless there. Module names can appear
(``pd.options.display.max_rows = 9`` mutates ``pd``): intersect with the step's inputs.
"""

from __future__ import annotations

import ast

from converter.notebook.analysis.nodes import _root_name
from converter.notebook.analysis.results import BUILTIN_NAMES, CallSite
from converter.notebook.analysis.scopes import _FunctionFrame, _nonclass, _Scopes

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

# Methods that leave their receiver alone: read-only queries and the ones returning a new object.
_HARMLESS_METHODS = frozenset(
    {
        # pandas / numpy
        "head", "tail", "describe", "info", "copy", "sum", "mean", "median", "mode", "min", "max",
        "std", "var", "count", "nunique", "unique", "value_counts", "groupby", "agg", "aggregate",
        "apply", "map", "applymap", "transform", "pipe", "query", "merge", "join", "concat", "drop",
        "dropna", "fillna", "sort_values", "sort_index", "reset_index", "set_index", "rename",
        "replace", "astype", "round", "clip", "abs", "cumsum", "cumprod", "diff", "pct_change",
        "shift", "rolling", "expanding", "resample", "pivot", "pivot_table", "melt", "stack",
        "unstack", "explode", "sample", "nlargest", "nsmallest", "idxmax", "idxmin", "argmax",
        "argmin", "argsort", "any", "all", "corr", "cov", "quantile", "dot", "reshape", "ravel",
        "flatten", "squeeze", "transpose", "tolist", "item", "items", "iterrows", "itertuples",
        "keys", "values", "get", "filter", "select_dtypes", "memory_usage", "equals", "isna",
        "isnull", "notna", "notnull", "isin", "between", "where", "mask", "duplicated",
        "drop_duplicates", "nonzero", "prod", "plot", "hist", "boxplot", "style", "to_frame",
        "first", "last", "size", "cut", "qcut", "loc", "iloc", "at", "iat", "view", "compute",
        "reindex", "interpolate", "ffill", "bfill", "ewm", "contains", "extract", "match", "len",
        "bar", "barh", "line", "scatter", "pie", "box", "kde", "area", "hexbin", "density",
        "searchsorted", "argwhere", "numpy", "cpu", "detach", "evaluate", "json",
        # scikit-learn style estimators and models
        "predict", "predict_proba", "predict_log_proba", "decision_function", "score",
        "score_samples", "inverse_transform", "get_params", "get_feature_names_out", "summary",
        # str / bytes / containers
        "format", "format_map", "split", "rsplit", "splitlines", "strip", "lstrip", "rstrip",
        "lower", "upper", "title", "capitalize", "casefold", "swapcase", "startswith", "endswith",
        "find", "rfind", "index", "rindex", "encode", "decode", "ljust", "rjust", "center",
        "zfill", "partition", "rpartition", "translate", "expandtabs", "union", "intersection",
        "difference", "symmetric_difference", "issubset", "issuperset", "isdisjoint", "conjugate",
        "bit_length", "hex", "fromkeys", "total_seconds", "isoformat", "strftime", "timestamp",
        "date", "time", "exists", "is_file", "is_dir", "glob", "rglob", "iterdir", "resolve",
        "with_suffix", "with_name", "relative_to", "joinpath", "read_text", "read_bytes", "open",
        "savefig", "show", "set_title", "set_xlabel", "set_ylabel", "legend", "grid",
    }
)  # fmt: skip
# Builtins that change an argument: every other builtin leaves its arguments alone.
_MUTATING_BUILTINS = frozenset({"setattr", "delattr", "next", "exec", "eval", "vars", "globals"})


def _harmless_method(name: str) -> bool:
    return name in _HARMLESS_METHODS or name.startswith(("to_", "is", "as", "get_"))


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
        inplace = any(
            k.arg == "inplace" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        if receiver is not None and (name in _MUTATING_METHODS or inplace):
            self._mutate_root(receiver)
        elif receiver is not None and not _harmless_method(name):
            self._may_mutate(receiver)
        elif receiver is None:
            self._arguments_passed(node, name)
        if name in _IN_PLACE_FUNCTIONS and node.args:
            self._mutate_root(node.args[0])
        for keyword in node.keywords:
            if keyword.arg == "out":
                self._mutate_root(keyword.value)

    def _arguments_passed(self, node: ast.Call, name: str) -> None:
        """`f(x, key=y)`: what f may do to x and y (a function of this cell: what it does)."""
        if name in BUILTIN_NAMES and name not in _MUTATING_BUILTINS:
            return
        site = CallSite(
            tuple(_root_name(a.value if isinstance(a, ast.Starred) else a) for a in node.args),
            tuple((k.arg, _root_name(k.value)) for k in node.keywords),
            any(isinstance(a, ast.Starred) for a in node.args),
        )
        roots = site.roots()
        if not roots:
            return
        frame = _nonclass(self._frame)
        info = self.functions.get(name)
        if isinstance(frame, _FunctionFrame):
            # Resolved when the function runs: a parameter passed on to a function of the cell
            # defined above that changes it is changed; library functions are taken as harmless.
            if info is not None and info.arguments is not None:
                frame.mutated.update(info.arguments.changed_by(site) & frame.params)
            return
        if info is not None:
            if info.arguments is not None:
                for root in sorted(info.arguments.changed_by(site)):
                    self._mutate(root)
        elif name not in self._state.maybe:  # bound in this cell by an import or assignment: harmless
            definite = self._state.definite

            def outside(root: str | None) -> str | None:
                return None if root is None or root in definite or root in BUILTIN_NAMES else root

            site = CallSite(
                tuple(outside(r) for r in site.positional),
                tuple((k, outside(r)) for k, r in site.keywords),
                site.starred,
            )
            if site.roots():
                self.calls.setdefault(name, []).append(site)
