"""Cells that run one after another (a step's cells) combined into one analysis."""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

from converter.notebook.analysis.results import (
    BUILTIN_NAMES,
    CallSite,
    CellAnalysis,
    _frozen_map,
    _FunctionInfo,
)


def analyze_sequence(cells: Sequence[CellAnalysis]) -> CellAnalysis:
    """Combine cells that run one after another (a step's cells) into one analysis.

    A name a cell reads is resolved by an earlier cell of the sequence that binds it; reading a
    function an earlier cell defined runs its body there. Without knowing where inside the cell the
    call happens, the function's reads of names the calling cell binds itself are weak.
    """
    definite: set[str] = set()
    maybe: set[str] = set()
    strong: set[str] = set()
    weak: set[str] = set()
    mutates: set[str] = set()
    may_mutate: set[str] = set()
    calls: dict[str, list[CallSite]] = {}
    imports: set[str] = set()
    functions: dict[str, _FunctionInfo] = {}

    def read(name: str, is_weak: bool, cell: CellAnalysis, expanded: set[str]) -> None:
        info = functions.get(name)
        if info is not None and name not in expanded:
            expanded.add(name)
            for inner in sorted(info.reads):
                read(inner, is_weak or inner in cell.assigns or inner in info.assigns, cell, expanded)
            mutates.update(m for m in info.mutates if m not in definite)
            maybe.update(info.assigns)
        if name in definite or name in BUILTIN_NAMES:
            return
        (weak if is_weak or name in maybe else strong).add(name)

    for cell in cells:
        expanded: set[str] = set()
        for name in sorted(cell.reads):
            read(name, name in cell.weak_reads, cell, expanded)
        mutates.update(m for m in cell.mutates if m not in definite)
        may_mutate.update(m for m in cell.may_mutate if m not in definite)
        for callee, sites in cell.calls.items():
            for site in sites:
                site = _outside(site, definite)
                if callee in functions:  # defined by an earlier cell of the sequence: we know what it does
                    effects = functions[callee].arguments
                    mutates.update(effects.changed_by(site) if effects else ())
                elif callee not in maybe and site.roots():  # else bound earlier by an import or assignment
                    calls.setdefault(callee, []).append(site)
        maybe |= cell.assigns
        definite |= cell.assigns - cell.conditional_assigns
        imports = (imports - cell.assigns) | cell.imports
        for name in cell.assigns:
            if name in cell.functions:
                functions[name] = _FunctionInfo(
                    cell.functions[name],
                    cell.function_mutates.get(name, frozenset()),
                    cell.function_assigns.get(name, frozenset()),
                    cell.mutating_functions.get(name),
                )
            elif name not in cell.conditional_assigns:
                functions.pop(name, None)

    final = {n: i for n, i in functions.items() if n in maybe}
    return CellAnalysis(
        python="".join(cell.python for cell in cells),
        reads=frozenset(strong | weak),
        assigns=frozenset(maybe),
        imports=frozenset(imports & maybe),
        modules=frozenset().union(*(c.modules for c in cells)),
        mutates=frozenset(mutates),
        functions=_frozen_map({n: i.reads for n, i in final.items()}),
        uses_ipython=any(c.uses_ipython for c in cells),
        star_imports=frozenset().union(*(c.star_imports for c in cells)),
        opaque=any(c.opaque for c in cells),
        paths_written=frozenset().union(*(c.paths_written for c in cells)),
        paths_read=frozenset().union(*(c.paths_read for c in cells)),
        weak_reads=frozenset(weak - strong),
        conditional_assigns=frozenset(maybe - definite),
        function_mutates=_frozen_map({n: i.mutates for n, i in final.items() if i.mutates}),
        function_assigns=_frozen_map({n: i.assigns for n, i in final.items() if i.assigns}),
        paths_unknown=any(c.paths_unknown for c in cells),
        may_mutate=frozenset(may_mutate - mutates),
        calls=MappingProxyType({n: tuple(sites) for n, sites in sorted(calls.items())}),
        mutating_functions=MappingProxyType(
            {n: i.arguments for n, i in sorted(final.items()) if i.arguments is not None}
        ),
    )


def _outside(site: CallSite, bound: set[str]) -> CallSite:
    """The call with the arguments the sequence bound itself left out."""

    def keep(root: str | None) -> str | None:
        return None if root in bound else root

    return CallSite(
        tuple(keep(r) for r in site.positional), tuple((k, keep(r)) for k, r in site.keywords), site.starred
    )
