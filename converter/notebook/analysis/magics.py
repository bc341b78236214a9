"""Magics and shell escapes, as IPython's transformer leaves them: what each does to the namespace."""

from __future__ import annotations

import ast
import re
import shlex
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from converter.notebook.analysis.files import _Files
from converter.notebook.analysis.results import CellSyntaxError
from converter.notebook.analysis.scopes import _FunctionFrame, _nonclass
from converter.notebook.analysis.transform import _PARSE_ERRORS, _parse, _shift

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
# Line magics that touch files we cannot name (shell commands, the working folder).
_FILE_LINE_MAGICS = frozenset(
    {
        "sx", "system", "cp", "mv", "rm", "rmdir", "mkdir", "cat", "cd", "pushd", "popd", "save",
        "store", "load", "loadpy", "pycat", "logstart", "ls", "ll", "lf", "lk", "ldir", "lx",
    }
)  # fmt: skip
_SCRIPT_CELL_MAGICS = frozenset(
    {"bash", "sh", "script", "perl", "ruby", "python", "python2", "python3", "pypy"}
)
_TEXT_CELL_MAGICS = frozenset({"html", "HTML", "svg", "SVG", "javascript", "js", "latex", "markdown"})
_TIMEIT_OPTIONS = re.compile(r"(?:-(?:[tcqo]+(?:[nrp]\s*\S+)?|[nrp]\s*\S+)(?:\s+|$))*")
_PRUN_OPTIONS = re.compile(r"(?:-(?:[rq]+(?:[DlsT]\s*\S+)?|[DlsT]\s*\S+)(?:\s+|$))*")
_DEBUG_OPTIONS = re.compile(r"(?:(?:--breakpoint|-b)\s+\S+(?:\s+|$))?")


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


class _Magics(_Files):
    """`get_ipython().run_line_magic(...)` and friends."""

    def _ipython(self, method: str, texts: list[str], node: ast.Call) -> bool:
        """Handle a transformed magic or shell escape; False if it is not one we can read."""
        if method == "run_line_magic" and len(texts) == 2:
            self._line_magic(texts[0], texts[1], node)
        elif method == "run_cell_magic" and len(texts) == 3:
            self._cell_magic(texts[0], texts[1], texts[2], node)
        elif method in ("system", "getoutput") and len(texts) == 1:
            self._expand(texts[0])
            self.paths_unknown = True  # a shell command may read or write any file
        else:
            return False
        return True

    def _line_magic(self, name: str, line: str, node: ast.Call) -> None:
        if name not in _NO_VAR_EXPAND:
            self._expand(line)
        if name in _FILE_LINE_MAGICS:
            self.paths_unknown = True
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
            self.paths_unknown |= "$" in line or "{" in line
            if "$" not in line and "{" not in line:
                path = next((w for w in _words(line) if w not in ("-a", "--append")), None)
                self._path(path, "a" if {"-a", "--append"} & set(line.split()) else "w")
        elif name in _SCRIPT_CELL_MAGICS:
            self.paths_unknown = True
            for var in _script_outputs(line):
                self._bind(var)
        elif name in _SHELL_CELL_MAGICS:
            self._expand(body)
            self.paths_unknown = True
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
