"""`# search: ...` annotations of parameters, parsed into typed search spaces.

One notation serves the local tuner (optuna distributions) and Katib (`parameterType` +
`feasibleSpace`), so a range means the same thing on a laptop and on a cluster. The notation is
parsed with `ast`, never evaluated: `loguniform(1e-4, 1e-1)`, `uniform(0, 1)`,
`int(2, 12)`, `int(2, 64, step=2)`, `int(1, 1024, log=True)`, `choice("rbf", "linear")`,
and two shorthands: a bare list `[50, 100, 200]` (a choice) and Python's `range(2, 13)` (an int range).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from converter.model import Parameter, Problem

Kind = Literal["uniform", "loguniform", "int", "choice"]
_NUMBERS = (int, float)


@dataclass(frozen=True)
class SearchSpace:
    """The range one parameter is tuned over."""

    name: str
    kind: Kind
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    log: bool = False
    choices: tuple[object, ...] = ()

    @property
    def grid(self) -> tuple[object, ...] | None:
        """Every value, when the space is finite (choice, int); None for continuous ranges."""
        if self.kind == "choice":
            return self.choices
        if self.kind == "int" and self.low is not None and self.high is not None:
            return tuple(range(int(self.low), int(self.high) + 1, self.step or 1))
        return None


class SearchSyntaxError(ValueError):
    """An annotation that is not one of the known distributions, with the reason for the user."""


def parse(name: str, text: str) -> SearchSpace:
    """Parse one annotation; raise `SearchSyntaxError` saying what is wrong."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise SearchSyntaxError(
            f"search: {text!r} is not a distribution call such as uniform(0, 1)"
        ) from None
    if isinstance(node, ast.List | ast.Tuple):  # a bare list of values: choice(...)
        node = ast.Call(ast.Name("choice"), node.elts, [])
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise SearchSyntaxError(f"search: {text!r} is not a distribution call such as uniform(0, 1)")
    kind = node.func.id
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    except ValueError:
        raise SearchSyntaxError(f"search: {text!r}: arguments must be literals") from None
    if kind == "choice":
        if kwargs or not args:
            raise SearchSyntaxError("choice(...) needs one or more values and no keywords")
        if not all(a is None or isinstance(a, bool | int | float | str) for a in args):
            raise SearchSyntaxError("choice(...) values must be numbers, strings, booleans or None")
        if len(set(map(repr, args))) != len(args):
            raise SearchSyntaxError(f"choice{tuple(args)!r} lists a value twice")
        return SearchSpace(name, "choice", choices=tuple(args))
    if kind == "range":  # Python's range(stop), range(start, stop[, step]): stop excluded
        if kwargs or not 1 <= len(args) <= 3 or not all(type(a) is int for a in args):
            raise SearchSyntaxError(f"{text.strip()}: range() takes one to three whole numbers")
        values = range(*args)
        if len(values) < 2:
            raise SearchSyntaxError(f"{text.strip()}: the range has fewer than two values")
        low, high = sorted((values[0], values[-1]))
        return SearchSpace(name, "int", low, high, step=abs(values.step))
    if kind not in ("uniform", "loguniform", "int"):
        raise SearchSyntaxError(f"unknown distribution {kind!r} (use uniform, loguniform, int or choice)")
    if len(args) != 2 or not all(isinstance(a, _NUMBERS) and not isinstance(a, bool) for a in args):
        raise SearchSyntaxError(f"{kind}(low, high) needs two numbers, got {text.strip()!r}")
    low, high = args
    allowed = {"step", "log"} if kind == "int" else set()
    if set(kwargs) - allowed:
        extra = ", ".join(sorted(set(kwargs) - allowed))
        raise SearchSyntaxError(f"{kind}(...) takes no {extra} argument")
    if not low < high:
        raise SearchSyntaxError(f"{text.strip()}: low must be below high")
    if kind == "loguniform" and low <= 0:
        raise SearchSyntaxError(f"{text.strip()}: loguniform needs a positive low bound")
    if kind == "uniform" or kind == "loguniform":
        if not (math.isfinite(low) and math.isfinite(high)):
            raise SearchSyntaxError(f"{text.strip()}: bounds must be finite")
        continuous: Kind = "loguniform" if kind == "loguniform" else "uniform"
        return SearchSpace(name, continuous, float(low), float(high), log=kind == "loguniform")
    if not all(isinstance(a, int) for a in args):
        raise SearchSyntaxError(f"{text.strip()}: int() bounds must be whole numbers")
    step = kwargs.get("step", 1)
    log = kwargs.get("log", False)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise SearchSyntaxError(f"{text.strip()}: step must be a positive whole number")
    if not isinstance(log, bool):
        raise SearchSyntaxError(f"{text.strip()}: log must be True or False")
    if log and (low < 1 or step != 1):
        raise SearchSyntaxError(f"{text.strip()}: log=True needs low >= 1 and no step")
    return SearchSpace(name, "int", low, high, step=step, log=log)


def _fits(space: SearchSpace, parameter: Parameter) -> str | None:
    """Why the space's values cannot replace the parameter's default, or None."""
    kind = parameter.type
    if space.kind == "choice":
        bad = [c for c in space.choices if not _same_type(c, kind)]
        return f"choice value {bad[0]!r} is not a {kind} like the default" if bad else None
    if space.kind == "int":
        return None if kind in ("int", "float") else f"int(...) does not fit a {kind} parameter"
    return None if kind == "float" else f"{space.kind}(...) gives floats; the parameter is a {kind}"


def _same_type(value: object, kind: str) -> bool:
    if kind == "float":
        return isinstance(value, _NUMBERS) and not isinstance(value, bool)
    expected = {"int": int, "bool": bool, "str": str, "list": list, "dict": dict}[kind]
    return type(value) is expected


def check(notebook: str, parameters: Sequence[Parameter]) -> tuple[dict[str, SearchSpace], list[Problem]]:
    """Every annotated parameter's space, and a `parameters`-tagged error for each bad annotation."""
    spaces: dict[str, SearchSpace] = {}
    problems: list[Problem] = []
    for parameter in parameters:
        if parameter.search is None:
            continue

        try:
            space = parse(parameter.name, parameter.search)
            why = (
                "an optional parameter (= None) cannot be tuned: give it a default"
                if parameter.optional
                else _fits(space, parameter)
            )
        except SearchSyntaxError as exc:
            why = str(exc)
        if why is None:
            spaces[parameter.name] = space
        else:
            message = f"{parameter.name}: {why}"
            problems.append(Problem(notebook, parameter.cell, "parameters", "error", message))
    return spaces, problems


def search_spaces(notebook: str, parameters: Sequence[Parameter]) -> dict[str, SearchSpace]:
    """The valid spaces (the reader has already reported the invalid ones)."""
    return check(notebook, parameters)[0]
