"""Static analysis of notebook code cells: which names a cell reads, binds, imports and may mutate.

The reader infers a pipeline's data edges from this (a step's inputs are the names it reads that an
earlier step assigned) and reports undefined names at compile time, so both directions of error hurt:
a missed read becomes a NameError in a pod, a spurious one a bogus error or edge.

How a cell is read
------------------
* The source goes through IPython's own input transformer (skipped, with an identical result, when
  the cell is plain Python); the resulting ``get_ipython().run_line_magic(...)``,
  ``run_cell_magic(...)``, ``system(...)`` and ``getoutput(...)`` calls are recognised in the AST.
  ``%time``/``%prun``/``%debug`` statements and ``%%time``/``%%prun``/``%%debug``/``%%capture`` bodies
  are analysed as code in place; ``%timeit``/``%%timeit`` code as a function body (IPython runs it
  inside one, so it binds nothing). ``$name`` and ``{expr}`` in shell commands and in the line of every
  magic IPython expands are reads. ``%run``, ``%pylab``, star imports, ``exec``/``eval`` of non-literal
  code, ``globals()[non_literal] = ...`` and unknown magics make the cell *opaque*.
* Module-level code is analysed in execution order with definite-assignment flow analysis (``if``,
  loops, ``try``, ``match``, short-circuit operators). ``reads`` holds every name that may be read
  before the cell binds it. ``weak_reads`` (a subset) holds the names only ever read where the cell
  *may* already have bound them (``for x in xs: last = x`` then ``print(last)``), or that come from a
  shell ``$name`` expansion (often an environment variable, and IPython leaves unknown ones alone):
  they are inputs when an earlier step defines them but are never "undefined name" errors.
* Function, lambda, comprehension and class bodies have their own scopes, resolved as Python does
  (class scopes are skipped by the functions nested in them). A function's free names are read when
  it is called, so they go in ``functions[name]``, not in ``reads``; defaults, decorators, annotations
  and class bodies are read at definition time. When module-level code of the same cell refers to a
  function of the cell, the function counts as called there: its free names (transitively), mutations
  and ``global`` assignments apply at that point. Comprehensions and lambdas that are not assigned to a
  name count as called where they appear.
* ``global x`` in a function: ``x`` is a free read of the function only if the function reads it;
  assigning it is recorded in ``function_assigns`` and becomes a (conditional) assignment of the cell
  only where the cell calls the function. ``except E as e`` binds ``e`` only inside the handler
  (Python deletes it afterwards); ``del x`` reads ``x`` and unbinds it.
* Annotations are evaluated (read) unless the cell has ``from __future__ import annotations``.
  Builtins and the names a kernel provides (``BUILTIN_NAMES``) are never reads.

Mutation heuristic
------------------
See ``mutations``: what the cell changes in place (``mutates``), what it calls methods of unknown
effect on (``may_mutate``), what it passes to functions defined elsewhere (``calls``).

File paths are best effort: string literals given to ``open``, ``pathlib.Path(...)`` methods and the
readers and writers in ``_READERS``/``_WRITERS``, plus ``%%writefile`` and ``%run``; normalised with
``posixpath.normpath``, URLs left out.

Modules
-------
``results`` (what an analysis says), ``transform`` (IPython's input transformer, parsing),
``scopes`` (frames, flow state, binding and reading names), ``mutations`` (the mutation heuristic),
``files`` (file paths), ``magics`` (magics and shell escapes), ``statements`` and ``flow`` (statements,
branches and loops), ``expressions``, ``analyzer`` (one cell) and ``sequence`` (cells run in order).
"""

from converter.notebook.analysis.analyzer import analyze_cell
from converter.notebook.analysis.results import (
    BUILTIN_NAMES,
    ArgumentEffects,
    CallSite,
    CellAnalysis,
    CellSyntaxError,
)
from converter.notebook.analysis.sequence import analyze_sequence
from converter.notebook.analysis.transform import transform

__all__ = [
    "BUILTIN_NAMES",
    "ArgumentEffects",
    "CallSite",
    "CellAnalysis",
    "CellSyntaxError",
    "analyze_cell",
    "analyze_sequence",
    "transform",
]
