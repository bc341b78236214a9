"""IPython's input transformer and parsing: a cell as written -> plain Python and its AST."""

from __future__ import annotations

import ast
import re
import warnings
from functools import lru_cache
from typing import Any

from converter.notebook.analysis.results import CellSyntaxError

# A superset of the input prompts IPython strips from a cell's first two lines.
_PROMPT_LIKE = re.compile(r"\s*(?:\[nav\]|\[ins\])?\s*(?:>>>|\.\.\.|In )")
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


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
