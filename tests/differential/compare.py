"""What a reader of an executed notebook sees, per code cell, normalised so two tools can be compared.

For each code cell: its printed text (stdout and stderr streams, in order, per stream), what it shows
(execute_result and display_data: the text/plain, text/html and text/markdown of each, whether an
image/png is there) and its error (ename, evalue, and the traceback without colours and without the
lines that name the kernel's temporary cell file or the execution count). Volatile text is masked:
memory addresses and the temporary file names kernels give cells.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
# The file names kernels give cells: ipykernel's /tmp/ipykernel_PID/HASH.py (HASH.py alone in a
# SyntaxError's message), IPython's older <ipython-input-N-...> and its "Cell In[N]" frame headers.
_CELL_FILE = re.compile(r"(/tmp/ipykernel_\d+/\d+\.py|\b\d{6,}\.py\b|<ipython-input-[^>]*>|Cell In\[\d*\])")
_SHOWN = ("text/plain", "text/html", "text/markdown", "text/latex")
SKIPPED_TAGS = frozenset({"injected-parameters"})


def _clean(text: str) -> str:
    return _CELL_FILE.sub("<cell>", _ADDRESS.sub("0x…", _ANSI.sub("", text)))


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def cell_view(cell: Any) -> dict[str, Any]:
    streams: dict[str, str] = {}
    shown: list[dict[str, Any]] = []
    error: dict[str, Any] | None = None
    for output in cell.get("outputs", []):
        kind = output.get("output_type")
        if kind == "stream":
            streams[output["name"]] = streams.get(output["name"], "") + _clean(_text(output["text"]))
        elif kind in ("execute_result", "display_data"):
            data = output.get("data", {})
            view = {m: _clean(_text(data[m])) for m in _SHOWN if m in data}
            view["kind"] = kind
            view["image/png"] = "image/png" in data
            shown.append(view)
        elif kind == "error":
            error = {
                "ename": output.get("ename"),
                "evalue": _clean(str(output.get("evalue"))),
                "traceback": _traceback(output.get("traceback", [])),
            }
    return {"streams": streams, "shown": shown, "error": error}


def _traceback(frames: list[str]) -> list[str]:
    """The traceback's lines as a reader sees them, minus the frames' file names and counters."""
    lines = [_clean(line).rstrip() for frame in frames for line in _clean(frame).splitlines()]
    return [line for line in lines if line.strip() and not set(line.strip()) <= {"-"}]


def notebook_view(path: Path) -> list[dict[str, Any]]:
    """One view per code cell of the notebook as written (cells a tool inserts are left out)."""
    nb = nbformat.read(path, as_version=4)
    views = []
    for cell in nb.cells:
        if cell.cell_type != "code" or SKIPPED_TAGS & set(cell.metadata.get("tags", [])):
            continue
        view = cell_view(cell)
        view["source"] = cell.source
        views.append(view)
    return views


def differences(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[str]:
    """Human-readable differences, one per differing cell and aspect (empty: they agree)."""
    found = []
    if len(ours) != len(theirs):
        found.append(f"{len(ours)} code cells against {len(theirs)}")
    for index, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        where = f"code cell {index} ({b['source'].splitlines()[0][:40] if b['source'] else ''!r})"
        for aspect in ("streams", "shown", "error"):
            if a[aspect] != b[aspect]:
                found.append(
                    f"{where}: {aspect} differ:\n  cellpipe:  {a[aspect]!r}\n  papermill: {b[aspect]!r}"
                )
    return found
