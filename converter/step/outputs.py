"""Cell outputs in the step runtime: stream text captured in linear time, MIME bundles, and their HTML.

Part of the step program: `converter.step.stepcode.runtime_source` inlines this module's body into
`runtime.py` where runtime imports it, so its imports must be ones runtime.py makes too (a test checks).
"""

from __future__ import annotations

import base64
import html
import os
import re
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes: kept in outputs, dropped in HTML


class Capture:
    """One stream output's text, captured in linear time with bounded memory.

    Chunks are kept in a list (growing one string by ``+=`` copies it on every write: quadratic in
    the bytes printed). Past `limit` characters the middle is dropped: the first half of the limit
    stays, then the most recent half, with a line saying how much was cut and why. The step's log
    (the pod log, or the local engine's step log) gets every line regardless.
    """

    limit = int(os.environ.get("CELLPIPE_OUTPUT_LIMIT", 64 * 1024 * 1024))  # characters per output

    def __init__(self, text: str) -> None:
        self.head: list[str] = []
        self.head_size = 0
        self.tail: list[str] = []  # used once the head is full; oldest chunks dropped first
        self.tail_start = 0  # index of the oldest chunk still kept in `tail`
        self.tail_size = 0
        self.cut_chars = self.cut_lines = 0
        self.add(text)

    def add(self, text: str) -> None:
        half = self.limit // 2
        if self.head_size < half and not self.tail:
            self.head.append(text)
            self.head_size += len(text)
            return
        self.tail.append(text)
        self.tail_size += len(text)
        while self.tail_size > half and len(self.tail) - self.tail_start > 1:
            dropped = self.tail[self.tail_start]
            self.tail[self.tail_start] = ""
            self.tail_start += 1
            self.tail_size -= len(dropped)
            self.cut_chars += len(dropped)
            self.cut_lines += dropped.count("\n")
        if self.tail_start > 1024 and self.tail_start * 2 > len(self.tail):
            del self.tail[: self.tail_start]  # amortized: each chunk is moved at most once more
            self.tail_start = 0

    def text(self) -> str:
        head = "".join(self.head)
        if not self.cut_chars:
            return head + "".join(self.tail)
        if not head.endswith("\n"):
            head += "\n"
        note = (
            f"[cellpipe: {self.cut_lines:,} lines ({self.cut_chars:,} characters) of output cut here to "
            f"bound the step's memory (CELLPIPE_OUTPUT_LIMIT={self.limit}); the step log has every line]\n"
        )
        return head + note + "".join(self.tail[self.tail_start :])


class Tee:
    """A stdout/stderr stand-in: writes through at once (pod log) and records a stream output."""

    def __init__(self, real: Any, name: str, step: Any) -> None:  # the runtime's _Step
        self.real, self.name, self.step = real, name, step

    def write(self, text: str) -> int:
        self.real.write(text)
        if "\n" in text:
            self.real.flush()
        self.step.stream(self.name, text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.real, attr)


def bundle(data: dict[str, Any]) -> dict[str, Any]:
    """A MIME bundle as nbformat stores it: binary images base64, everything else text or JSON."""
    out: dict[str, Any] = {}
    for mime, value in data.items():
        if isinstance(value, tuple):  # _repr_png_ may return (data, metadata)
            value = value[0]
        if isinstance(value, bytes):
            binary = mime.startswith("image/") and "svg" not in mime
            value = base64.b64encode(value).decode() if binary else value.decode(errors="replace")
        elif not (isinstance(value, str) or "json" in mime):
            value = str(value)
        out[mime] = value
    return out


def render_output(output: dict[str, Any]) -> str:
    """One nbformat output as report HTML, preferring the richest representation."""
    kind = output["output_type"]
    if kind == "stream":
        return f'<pre class="{output["name"]}">{escaped(output["text"])}</pre>'
    if kind == "error":
        return f'<pre class="error">{escaped(chr(10).join(output["traceback"]))}</pre>'
    data = output["data"]
    if "text/html" in data:
        return f"<div>{data['text/html']}</div>"
    for mime in ("image/svg+xml", "image/png", "image/jpeg"):
        if mime in data:
            raw = data[mime].encode() if "svg" in mime else None
            encoded = base64.b64encode(raw).decode() if raw is not None else data[mime]
            return f'<img src="data:{mime};base64,{encoded}">'
    for mime in ("text/markdown", "text/latex", "text/plain"):
        if mime in data:
            return f"<pre>{escaped(data[mime])}</pre>"
    return ""


def escaped(text: str) -> str:
    return html.escape(ANSI.sub("", text))
