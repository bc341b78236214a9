"""The reader's working data: cells as read, steps being drafted, the problems found so far."""

from __future__ import annotations

from dataclasses import dataclass, field

from converter.model import CodeCell, Problem
from converter.notebook import tags
from converter.notebook.analysis import CellAnalysis


class Report:
    """Every problem of one notebook: the reader collects them all, then decides."""

    def __init__(self, notebook: str) -> None:
        self.notebook = notebook
        self.problems: list[Problem] = []
        # An untagged notebook runs as papermill runs it: a mistake in a cell's code (a syntax error,
        # an undefined name) stops the run at that cell instead of refusing the notebook. Grouping
        # decides; syntax errors found before that wait in `deferred`.
        self.lenient = False
        self.deferred: list[tuple[Cell, str]] = []

    def error(self, cell: int | None, tag: str | None, message: str) -> None:
        self.problems.append(Problem(self.notebook, cell, tag, "error", message))

    def warn(self, cell: int | None, tag: str | None, message: str) -> None:
        self.problems.append(Problem(self.notebook, cell, tag, "warning", message))

    def error_at(self, cell: Cell, message: str) -> None:
        """An error in a cell's code, labelled with the cell's own step tag (if it has one)."""
        self.error(cell.index, cell_tag(cell.tags), message)

    def code_error(self, cell: Cell, message: str) -> None:
        """A mistake in a cell's code: an error, but a warning in an untagged notebook (see `lenient`)."""
        if self.lenient:
            stops = f"{message}; the run stops at this cell, as papermill's does"
            self.warn(cell.index, cell_tag(cell.tags), stops)
        else:
            self.error_at(cell, message)

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


@dataclass
class Cell:
    index: int
    source: str
    tags: tags.CellTags
    analysis: CellAnalysis | None  # None: syntax error (already reported)


@dataclass
class StepDraft:
    name: str
    first: Cell
    tag: str  # how the step was named, for messages
    cells: list[Cell] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    settings: tags.Settings = field(default_factory=dict)
    structured: tags.Settings = field(default_factory=dict)


EMPTY = CellAnalysis(
    python="",
    reads=frozenset(),
    assigns=frozenset(),
    imports=frozenset(),
    modules=frozenset(),
    mutates=frozenset(),
    functions={},
    uses_ipython=False,
    star_imports=frozenset(),
    opaque=False,
    paths_written=frozenset(),
    paths_read=frozenset(),
)


def code_cell(cell: Cell) -> CodeCell:
    python = cell.analysis.python if cell.analysis else cell.source
    return CodeCell(cell.index, cell.source, python, raises=cell.tags.raises)


def cell_tag(cell_tags: tags.CellTags) -> str | None:
    if cell_tags.step:
        return f"step:{cell_tags.step}"
    return cell_tags.role
