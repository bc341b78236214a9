"""One pass over a cell's statements in execution order: `analyze_cell`."""

from __future__ import annotations

from functools import lru_cache
from types import MappingProxyType

from converter.notebook.analysis.expressions import _Expressions
from converter.notebook.analysis.results import BUILTIN_NAMES, CellAnalysis, CellSyntaxError, _frozen_map
from converter.notebook.analysis.transform import _parse


class _CellAnalyzer(_Expressions):
    """One pass over a cell's statements in execution order."""

    def result(self, python: str) -> CellAnalysis:
        state = self._state
        assigns = frozenset(state.maybe)
        functions = {n: i for n, i in self.functions.items() if n in assigns}
        return CellAnalysis(
            python=python,
            reads=frozenset(self.strong_reads | self.weak_reads),
            assigns=assigns,
            imports=frozenset(self.imports & assigns),
            modules=frozenset(self.modules),
            mutates=frozenset(self.mutates - BUILTIN_NAMES),
            functions=_frozen_map({n: i.reads - BUILTIN_NAMES for n, i in functions.items()}),
            uses_ipython=self.uses_ipython,
            star_imports=frozenset(self.star_imports),
            opaque=self.opaque,
            paths_written=frozenset(self.paths_written),
            paths_read=frozenset(self.paths_read),
            weak_reads=frozenset(self.weak_reads - self.strong_reads),
            conditional_assigns=frozenset(state.maybe - state.definite),
            function_mutates=_frozen_map(
                {n: i.mutates - BUILTIN_NAMES for n, i in functions.items() if i.mutates - BUILTIN_NAMES}
            ),
            function_assigns=_frozen_map({n: i.assigns for n, i in functions.items() if i.assigns}),
            paths_unknown=self.paths_unknown,
            may_mutate=frozenset(self.may_mutate - self.mutates - BUILTIN_NAMES),
            calls=MappingProxyType({n: tuple(sites) for n, sites in sorted(self.calls.items())}),
            mutating_functions=MappingProxyType(
                {n: i.arguments for n, i in sorted(functions.items()) if i.arguments is not None}
            ),
        )


@lru_cache(maxsize=4096)
def analyze_cell(source: str) -> CellAnalysis:
    """Analyse one code cell as written in the notebook (magics included).

    Raises CellSyntaxError for invalid code, with the line number in the original cell when known.
    Results are cached by source: they are immutable.
    """
    lines = max(1, len(source.splitlines()))
    try:
        python, tree, leading = _parse(source)
        analyzer = _CellAnalyzer(leading)
        analyzer.stmts(tree.body)
    except CellSyntaxError as err:
        if err.lineno is not None and err.lineno > lines:
            raise CellSyntaxError(err.message, lines) from None
        raise
    except RecursionError:
        raise CellSyntaxError("the cell is nested too deeply to analyse", None) from None
    return analyzer.result(python)
