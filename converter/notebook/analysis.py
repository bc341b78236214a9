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
A name the cell did not definitely bind itself is in ``mutates`` when the cell assigns or deletes an
item or attribute through it (``df["a"] = 1``, ``model.coef_ = w``, ``del d[k]``, ``x.a += 1``), calls a
method from ``_MUTATING_METHODS`` on it or any method with ``inplace=True`` (the receiver's root name:
``df["a"].fillna(0, inplace=True)`` mutates ``df``), passes it first to a function from
``_IN_PLACE_FUNCTIONS`` (``np.random.shuffle(x)``, ``heapq.heappush(h, v)``) or as ``out=``. Module names
can appear (``pd.options.display.max_rows = 9`` mutates ``pd``): intersect with the step's inputs.

File paths are best effort: string literals given to ``open``, ``pathlib.Path(...)`` methods and the
readers and writers in ``_READERS``/``_WRITERS``, plus ``%%writefile`` and ``%run``; normalised with
``posixpath.normpath``, URLs left out.
"""

from __future__ import annotations

import ast
import builtins
import posixpath
import re
import shlex
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple

_KERNEL_NAMES = frozenset(
    {
        "display", "get_ipython", "In", "Out", "exit", "quit", "help", "copyright", "credits",
        "license", "_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh", "__IPYTHON__",
        "__name__", "__builtins__", "__builtin__", "__doc__", "__spec__", "__loader__", "__package__",
    }
)  # fmt: skip
BUILTIN_NAMES: frozenset[str] = frozenset(dir(builtins)) | _KERNEL_NAMES

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

# Callables taking a file path: which positional argument (None: the first string literal among the
# first two, for `np.save(path, a)` as well as `joblib.dump(obj, path)`), else a keyword below.
_FIRST_ARGUMENT_READERS = (
    "read_csv", "read_parquet", "read_json", "read_pickle", "read_excel", "read_feather", "read_hdf",
    "read_stata", "read_orc", "read_table", "read_fwf", "read_sas", "read_spss", "read_xml",
    "read_ipc", "scan_csv", "scan_parquet", "loadtxt", "genfromtxt", "fromfile", "imread",
    "open_dataset", "read_file", "load_workbook",
)  # fmt: skip
_FIRST_ARGUMENT_WRITERS = (
    "to_csv", "to_parquet", "to_json", "to_pickle", "to_excel", "to_feather", "to_hdf", "to_stata",
    "to_orc", "to_html", "to_xml", "to_netcdf", "to_file", "write_csv", "write_parquet",
    "write_json", "write_ipc", "savefig", "savetxt", "savez", "savez_compressed", "imwrite",
    "imsave", "write_image", "write_html",
)  # fmt: skip
_READERS: dict[str, int | None] = {
    **dict.fromkeys(_FIRST_ARGUMENT_READERS, 0),
    "load": None,
    "load_model": None,
}
_WRITERS: dict[str, int | None] = {
    **dict.fromkeys(_FIRST_ARGUMENT_WRITERS, 0),
    "save": None,
    "dump": None,
    "save_model": None,
    "urlretrieve": 1,
}
_COPIERS = frozenset({"copy", "copy2", "copyfile", "move"})  # shutil: (source, destination)
_PATH_KEYWORDS = frozenset(
    {"path", "path_or_buf", "filepath_or_buffer", "fname", "filename", "file", "filepath", "uri"}
)

# Magics, by what they do to the namespace (IPython 8 built-ins plus common extensions).
_NO_VAR_EXPAND = frozenset({"time", "timeit", "prun", "debug"})  # IPython's @no_var_expand magics
_OPAQUE_LINE_MAGICS = frozenset({"run", "pylab", "macro", "edit", "ed", "sc", "rerun"})
_INERT_LINE_MAGICS = frozenset(
    {
        "alias", "alias_magic", "autoawait", "autocall", "automagic", "bookmark", "cat", "cd",
        "colors", "conda", "config", "cp", "dhist", "dirs", "doctest_mode", "env", "gui", "hist",
        "history", "killbgscripts", "ldir", "lf", "lk", "ll", "load", "load_ext", "loadpy", "logoff",
        "logon", "logstart", "logstate", "logstop", "ls", "lsmagic", "lx", "magic", "matplotlib",
        "mkdir", "mv", "notebook", "page", "pastebin", "pdb", "pdef", "pdoc", "pfile", "pinfo",
        "pinfo2", "pip", "popd", "pprint", "precision", "psearch", "psource", "pushd", "pwd", "pycat",
        "quickref", "recall", "rehashx", "reload_ext", "rep", "reset", "reset_selective", "rm",
        "rmdir", "save", "set_env", "tb", "unalias", "unload_ext", "who", "who_ls", "whos", "xdel",
        "xmode", "sx", "system", "store", "autoreload", "aimport", "tensorboard", "watermark",
        "mamba", "micromamba", "clear", "less", "more", "man",
    }
)  # fmt: skip
_SHELL_CELL_MAGICS = frozenset({"!", "sx", "system"})
_SCRIPT_CELL_MAGICS = frozenset(
    {"bash", "sh", "script", "perl", "ruby", "python", "python2", "python3", "pypy"}
)
_TEXT_CELL_MAGICS = frozenset({"html", "HTML", "svg", "SVG", "javascript", "js", "latex", "markdown"})
_TIMEIT_OPTIONS = re.compile(r"(?:-(?:[tcqo]+(?:[nrp]\s*\S+)?|[nrp]\s*\S+)(?:\s+|$))*")
_PRUN_OPTIONS = re.compile(r"(?:-(?:[rq]+(?:[DlsT]\s*\S+)?|[DlsT]\s*\S+)(?:\s+|$))*")
_DEBUG_OPTIONS = re.compile(r"(?:(?:--breakpoint|-b)\s+\S+(?:\s+|$))?")
# A superset of the input prompts IPython strips from a cell's first two lines.
_PROMPT_LIKE = re.compile(r"\s*(?:\[nav\]|\[ins\])?\s*(?:>>>|\.\.\.|In )")
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


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


# --------------------------------------------------------------------------- IPython transform


@lru_cache(maxsize=1)
def _transformer() -> Any:
    """IPython is imported only for cells that need it: plain cells never pay for it."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager()


def _leading_blank_lines(cell: str) -> int:
    lines = cell.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line and not line.isspace():
            return index
    return 0


def _prepare(source: str) -> tuple[str, ast.Module | None, int]:
    """(transformed source, its AST when already parsed, blank lines IPython dropped from the top).

    A cell that parses as Python, does not start with whitespace and has nothing like a prompt on
    its first two lines is returned as is: IPython's cleanup transforms cannot apply to it, and its
    token transforms only fire on tokens (`!`, `?`, `%` after `=`, an escape character starting a
    logical line) that valid Python never has outside strings and comments.
    """
    cell = source if source.endswith("\n") else source + "\n"
    if not cell[0].isspace() and not any(_PROMPT_LIKE.match(line) for line in cell.splitlines()[:2]):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return cell, ast.parse(cell), 0
        except _PARSE_ERRORS:
            pass
    leading = _leading_blank_lines(cell)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _transformer().transform_cell(cell), None, leading
    except SyntaxError as err:  # tokenize's IndentationError escapes IPython
        raise CellSyntaxError(err.msg or "invalid syntax", _shift(err.lineno, leading)) from None
    except Exception as err:  # IPython's transformer is not total; never let it crash a compile
        raise CellSyntaxError(f"IPython cannot transform the cell: {err}", None) from None


def _shift(lineno: int | None, offset: int) -> int | None:
    return None if lineno is None else lineno + offset


def transform(source: str) -> str:
    """IPython's own input transformer (``TransformerManager().transform_cell``), fast for plain cells.

    Raises CellSyntaxError when IPython's transformer itself rejects the cell.
    """
    return _prepare(source)[0]


def _parse(source: str) -> tuple[str, ast.Module, int]:
    """Transform, parse and compile-check a cell (compiling finds `return` outside a function & co)."""
    python, tree, leading = _prepare(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if tree is None:
                tree = ast.parse(python)
            compile(tree, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        except SyntaxError as err:
            raise CellSyntaxError(err.msg or "invalid syntax", _shift(err.lineno, leading)) from None
        except (RecursionError, MemoryError):
            raise CellSyntaxError("the cell is nested too deeply to compile", None) from None
        except ValueError as err:  # e.g. null bytes
            raise CellSyntaxError(str(err), None) from None
    return python, tree, leading


# --------------------------------------------------------------------------- scopes and flow


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
        "loaded", "mutated", "parent",
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

    def close(self) -> _FunctionInfo:
        return _FunctionInfo(
            frozenset(self.loaded - self.bound),
            frozenset(self.mutated - self.bound),
            frozenset(self.global_assigns),
        )


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


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _namespace_kind(node: ast.expr) -> str | None:
    """'globals' for `globals()`, 'locals' for `locals()`/`vars()`, else None."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and not node.args
        and not node.keywords
        and node.func.id in ("globals", "locals", "vars")
    ):
        return "globals" if node.func.id == "globals" else "locals"
    return None


def _string(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _argument(node: ast.Call, index: int, keywords: Collection[str]) -> ast.expr | None:
    if index < len(node.args) and not any(isinstance(a, ast.Starred) for a in node.args[: index + 1]):
        return node.args[index]
    return next((k.value for k in node.keywords if k.arg is not None and k.arg in keywords), None)


def _path_argument(node: ast.Call, index: int | None) -> str | None:
    if index is None:
        literal = next((s for a in node.args[:2] if (s := _string(a)) is not None), None)
        return literal if literal is not None else _string(_argument(node, 99, _PATH_KEYWORDS))
    return _string(_argument(node, index, _PATH_KEYWORDS))


def _path_object(node: ast.expr) -> str | None:
    """The literal in `Path("p")` / `pathlib.Path("p")`."""
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in ("Path", "PurePath", "PosixPath"):
            return _string(node.args[0])
    return None


def _open_mode(node: ast.Call, index: int) -> str | None:
    """The literal mode of an open() call ("r" when absent), None when it is not a literal."""
    mode = _argument(node, index, ("mode",))
    return "r" if mode is None else _string(mode)


def _option_rest(line: str, options: re.Pattern[str]) -> str:
    """The statement after getopt-style options, as IPython's parse_options leaves it."""
    text = line.lstrip()
    match = options.match(text)
    return text[match.end() :] if match else text


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def _script_outputs(line: str) -> Iterator[str]:
    """Variables `%%bash --out NAME --err NAME --proc NAME` binds."""
    words = line.split()
    for index, word in enumerate(words):
        option, _, value = word.partition("=")
        if option in ("--out", "--err", "--proc"):
            if not value and index + 1 < len(words):
                value = words[index + 1]
            if value.isidentifier():
                yield value


# --------------------------------------------------------------------------- the analyser


class _CellAnalyzer:
    """One pass over a cell's statements in execution order."""

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
        self.imports: set[str] = set()
        self.modules: set[str] = set()
        self.star_imports: set[str] = set()
        self.functions: dict[str, _FunctionInfo] = {}
        self.uses_ipython = False
        self.opaque = False
        self.paths_read: set[str] = set()
        self.paths_written: set[str] = set()

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
        )

    # ----------------------------------------------------------------- names

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
                previous.reads | info.reads, previous.mutates | info.mutates, previous.assigns | info.assigns
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

    # ----------------------------------------------------------------- statements

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

    def _dead(self) -> None:
        if self._frame is self._module:
            self._state.dead = True

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

    def _through(self, node: ast.Attribute | ast.Subscript) -> None:
        """An attribute or item set or deleted through a name: reads it and may mutate its root."""
        self._expr(node.value)
        if isinstance(node, ast.Subscript):
            self._expr(node.slice)
        self._mutate_root(node.value)

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

    def _s_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self._expr(item.context_expr)
            if item.optional_vars is not None:
                self._target(item.optional_vars)
        self.stmts(node.body)

    _s_AsyncWith = _s_With

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

    # ----------------------------------------------------------------- expressions

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
        if receiver is not None:
            kind = _namespace_kind(receiver)
            if kind is not None:
                self._namespace_call(kind, name, node)
            elif name in _MUTATING_METHODS or any(
                k.arg == "inplace" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            ):
                self._mutate_root(receiver)
        if name in _IN_PLACE_FUNCTIONS and node.args:
            self._mutate_root(node.args[0])
        for keyword in node.keywords:
            if keyword.arg == "out":
                self._mutate_root(keyword.value)
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

    def _file_paths(self, node: ast.Call, name: str, receiver: ast.expr | None) -> None:
        path_object = None if receiver is None else _path_object(receiver)
        if path_object is not None:
            if name in ("read_text", "read_bytes"):
                self._path(path_object, "r")
            elif name in ("write_text", "write_bytes", "touch"):
                self._path(path_object, "w")
            elif name == "open":
                self._path(path_object, _open_mode(node, 0))
        elif name == "open":
            self._path(_string(_argument(node, 0, ("file", "filename", "fp"))), _open_mode(node, 1))
        elif name in _READERS:
            self._path(_path_argument(node, _READERS[name]), "r")
        elif name in _WRITERS:
            self._path(_path_argument(node, _WRITERS[name]), "w")
        elif name in _COPIERS and receiver is not None:
            self._path(_string(_argument(node, 0, ("src",))), "r")
            self._path(_string(_argument(node, 1, ("dst",))), "w")

    def _path(self, path: str | None, mode: str | None) -> None:
        if not path or not mode or "://" in path or not path.strip() or "\0" in path:
            return
        path = posixpath.normpath(path)
        if "+" in mode or "r" in mode:
            self.paths_read.add(path)
        if "+" in mode or any(c in mode for c in "wax"):
            self.paths_written.add(path)

    # ----------------------------------------------------------------- IPython

    def _ipython(self, method: str, texts: list[str], node: ast.Call) -> bool:
        """Handle a transformed magic or shell escape; False if it is not one we can read."""
        if method == "run_line_magic" and len(texts) == 2:
            self._line_magic(texts[0], texts[1], node)
        elif method == "run_cell_magic" and len(texts) == 3:
            self._cell_magic(texts[0], texts[1], texts[2], node)
        elif method in ("system", "getoutput") and len(texts) == 1:
            self._expand(texts[0])
        else:
            return False
        return True

    def _line_magic(self, name: str, line: str, node: ast.Call) -> None:
        if name not in _NO_VAR_EXPAND:
            self._expand(line)
        if name == "time":
            self._splice(line, node, "%time", cell=False)
        elif name == "debug":
            self._splice(_option_rest(line, _DEBUG_OPTIONS), node, "%debug", cell=False)
        elif name == "prun":
            self._splice(_option_rest(line, _PRUN_OPTIONS), node, "%prun", cell=False)
        elif name == "timeit":
            with self._isolated():
                self._splice(_option_rest(line, _TIMEIT_OPTIONS), node, "%timeit", cell=False)
        elif name in _OPAQUE_LINE_MAGICS:
            self.opaque = True
            if name == "run":
                words = _words(line)
                if "-m" not in words:
                    self._path(next((w for w in words if not w.startswith("-")), None), "r")
        elif name == "store":
            self.opaque |= "-r" in line.split()
        elif name not in _INERT_LINE_MAGICS:
            self.opaque = True  # an extension's magic may define names

    def _cell_magic(self, name: str, line: str, body: str, node: ast.Call) -> None:
        if name not in _NO_VAR_EXPAND:
            self._expand(line)
        if name in ("time", "debug", "capture"):
            self._splice(body, node, f"%%{name}", cell=True)
            if name == "capture":
                var = next((w for w in line.split() if not w.startswith("-")), None)
                if var is not None and var.isidentifier():
                    self._bind(var)
        elif name == "prun":
            # the statement on the magic's line comes first, then the body
            self._splice(_option_rest(line, _PRUN_OPTIONS) + "\n" + body, node, "%%prun", cell=False)
        elif name == "timeit":
            with self._isolated():
                self._splice(_option_rest(line, _TIMEIT_OPTIONS), node, "%%timeit setup", cell=False)
                self._splice(body, node, "%%timeit", cell=True)
        elif name in ("writefile", "file"):
            if "$" not in line and "{" not in line:
                path = next((w for w in _words(line) if w not in ("-a", "--append")), None)
                self._path(path, "a" if {"-a", "--append"} & set(line.split()) else "w")
        elif name in _SCRIPT_CELL_MAGICS:
            for var in _script_outputs(line):
                self._bind(var)
        elif name in _SHELL_CELL_MAGICS:
            self._expand(body)
        elif name not in _TEXT_CELL_MAGICS:
            self.opaque = True

    @contextmanager
    def _isolated(self) -> Iterator[None]:
        """%timeit runs its code inside a function: it reads globals now and binds nothing."""
        frame = _FunctionFrame(self._frame)
        with self._inside(frame):
            yield
        self._apply(frame.close(), _nonclass(self._frame))

    def _splice(self, code: str, node: ast.Call, label: str, cell: bool) -> None:
        """Analyse the code a magic runs, here, as if it were written in its place."""
        if not code.strip():
            return
        # Original line of the magic call; a cell magic's body starts on the next line.
        base = self._line_base + node.lineno - (0 if cell else 1)
        try:
            _, tree, leading = _parse(code)
        except CellSyntaxError as err:
            raise CellSyntaxError(f"{err.message} (in {label})", _shift(err.lineno, base)) from None
        outer, self._line_base = self._line_base, base + leading
        self.stmts(tree.body)
        self._line_base = outer

    def _expand(self, text: str) -> None:
        """Names IPython interpolates into a shell command or magic line: `$name`, `{expr}`."""
        if "$" not in text and "{" not in text:
            return
        from IPython.utils.text import DollarFormatter

        expressions = []
        try:
            for _, field_name, _, _ in DollarFormatter().parse(text):
                if field_name:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        expressions.append(ast.parse(field_name.strip(), mode="eval").body)
        except _PARSE_ERRORS:
            return  # IPython then leaves the whole command unexpanded
        self._weak += 1
        for expression in expressions:
            self._expr(expression)
        self._weak -= 1


# --------------------------------------------------------------------------- public entry points


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
        maybe |= cell.assigns
        definite |= cell.assigns - cell.conditional_assigns
        imports = (imports - cell.assigns) | cell.imports
        for name in cell.assigns:
            if name in cell.functions:
                functions[name] = _FunctionInfo(
                    cell.functions[name],
                    cell.function_mutates.get(name, frozenset()),
                    cell.function_assigns.get(name, frozenset()),
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
    )
