"""The differential corpus: notebooks written as percent-format `.cells` files, read into notebooks.

A corpus file is a sequence of cells, each introduced by a marker line with its tags in brackets::

    # %% [parameters]
    lr = 0.1
    # %% [step:train raises-exception]
    lr = lr * 2

``# %% md`` starts a markdown cell. Lines before the first marker are the file's header: ``# param:
NAME VALUE`` lines (VALUE a Python literal) are run-time parameters, given to papermill as a dict and
to `cellpipe run` as ``-p NAME VALUE``; ``# metadata: JSON`` is merged into the notebook metadata;
``# file: NAME`` + indented lines write a file next to the notebook before both runs.

Each file is run twice by cellpipe: as written ("steps": split into steps by its tags) and "untagged",
with every tag papermill does not know removed, so the same code is one step. papermill runs the
notebook as written (it ignores cellpipe's tags), and both cellpipe runs must agree with it.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

CORPUS = Path(__file__).resolve().parent / "corpus"
PAPERMILL_TAGS = frozenset({"parameters", "raises-exception"})
VARIANTS = ("steps", "untagged")
_MARKER = re.compile(r"^# %%(?P<md> md)?(?: \[(?P<tags>[^\]]*)\])?\s*$")


@dataclass
class Entry:
    """One corpus notebook: its cells, run-time parameters, metadata and side files."""

    name: str
    cells: list[tuple[str, str, list[str]]]  # (cell type, source, tags)
    parameters: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def notebook(self, variant: str) -> nbformat.NotebookNode:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
        nb.metadata["language_info"] = {"name": "python"}
        for key, value in self.metadata.items():
            if variant == "steps" or key in ("kernelspec", "language_info"):
                nb.metadata[key] = value
        for kind, source, tags in self.cells:
            cell = (
                nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
            )
            kept = tags if variant == "steps" else [t for t in tags if t in PAPERMILL_TAGS]
            if kept:
                cell.metadata["tags"] = kept
            nb.cells.append(cell)
        return nb

    def write(self, folder: Path, variant: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            (folder / name).write_text(text)
        path = folder / f"{self.name}.ipynb"
        nbformat.write(self.notebook(variant), path)
        return path


def read(path: Path) -> Entry:
    entry = Entry(path.stem, [])
    lines = path.read_text().splitlines()
    index = 0
    file_name: str | None = None
    while index < len(lines) and not _MARKER.match(lines[index]):
        line = lines[index]
        index += 1
        if file_name is not None and line.startswith("#   "):
            entry.files[file_name] += line[4:] + "\n"
            continue
        file_name = None
        if line.startswith("# param: "):
            name, _, value = line[len("# param: ") :].partition(" ")
            entry.parameters[name] = ast.literal_eval(value.strip())
        elif line.startswith("# metadata: "):
            entry.metadata.update(json.loads(line[len("# metadata: ") :]))
        elif line.startswith("# file: "):
            file_name = line[len("# file: ") :].strip()
            entry.files[file_name] = ""
    current: list[str] | None = None
    for line in lines[index:]:
        match = _MARKER.match(line)
        if match:
            current = []
            tags = (match.group("tags") or "").split()
            entry.cells.append(("md" if match.group("md") else "code", "", tags))
            continue
        assert current is not None
        kind, source, tags = entry.cells[-1]
        entry.cells[-1] = (kind, source + line + "\n", tags)
    entry.cells = [(k, s.strip("\n"), t) for k, s, t in entry.cells]
    return entry


def entries() -> list[Entry]:
    return [read(p) for p in sorted(CORPUS.glob("*.cells"))]
