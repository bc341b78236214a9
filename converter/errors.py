"""Errors a user can cause. The CLI prints them without a traceback and exits 2."""

from __future__ import annotations

from collections.abc import Iterable

from converter.model import Problem


class CellpipeError(Exception):
    """A mistake in the user's input, reported as a clear message, never a traceback."""


class InvalidNotebook(CellpipeError):
    """The notebook has one or more errors; every problem found is carried at once."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = tuple(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "invalid notebook")
