"""PyYAML's pure-Python YAML output, byte for byte, without its two per-character loops.

KFP writes the IR with `yaml.dump_all(..., sort_keys=True)`, PyYAML's pure-Python emitter, so a
person who runs the generated `NAME.py` gets exactly those bytes and `cellpipe compile` must write
them too (libyaml's emitter is fast but folds long quoted strings differently). Commands carry
cell code and the pipeline the packed runtime (~16 kB), and the pure emitter walks such strings
character by character twice, in `analyze_scalar` and `write_double_quoted`: most of a large compile. The
overrides below make the same decisions with regular expressions and slices; tests compare their
output with PyYAML's own.
"""

from __future__ import annotations

import re

import yaml
from yaml.emitter import ScalarAnalysis

_WHITESPACE = "\0 \t\r\n\x85\u2028\u2029"
# Raw strings: the regular expression engine reads the escapes, so `\x5d` stays a character, not `]`.
_WS = r"\x00 \t\r\n\x85\u2028\u2029"
_BREAK = re.compile(r"[\n\x85\u2028\u2029]")
_BREAK_SPACE = re.compile(r"[\n\x85\u2028\u2029] ")
_SPACE_BREAK = re.compile(r" [\n\x85\u2028\u2029]")
# Indicators after the first character (`analyze_scalar`'s `index > 0` branch).
_FLOW_INSIDE = re.compile(rf"[,?\[\]{{}}:]|(?<=[{_WS}])#")
_BLOCK_INSIDE = re.compile(rf":(?=[{_WS}]|\Z)|(?<=[{_WS}])#")
_SPECIAL = re.compile(r"[^\n\x20-\x7e]")
_SPECIAL_UNICODE = re.compile(r"[^\n\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010fffe]")
# Characters `write_double_quoted` escapes.
_ESCAPED = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_ESCAPED_UNICODE = re.compile(
    r"[^\x20\x21\x23-\x5b\x5d-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd]"
)


class FastDumper(yaml.Dumper):
    """`yaml.Dumper` (what `yaml.dump_all` uses by default) with linear-time scalar scanning."""

    def analyze_scalar(self, scalar: str) -> ScalarAnalysis:
        if not scalar:
            return super().analyze_scalar(scalar)
        flow = block = scalar.startswith(("---", "..."))
        first = scalar[0]
        followed = len(scalar) == 1 or scalar[1] in _WHITESPACE
        if first in "#,[]{}&*!|>'\"%@`":
            flow = block = True
        if first in "?:":
            flow = True
            block = block or followed
        if first == "-" and followed:
            flow = block = True
        flow = flow or _FLOW_INSIDE.search(scalar, 1) is not None
        block = block or _BLOCK_INSIDE.search(scalar, 1) is not None
        line_breaks = _BREAK.search(scalar) is not None
        special = (_SPECIAL_UNICODE if self.allow_unicode else _SPECIAL).search(scalar) is not None
        leading = scalar[0] == " " or scalar[0] in "\n\x85\u2028\u2029"
        trailing_space = scalar[-1] == " "
        trailing = trailing_space or scalar[-1] in "\n\x85\u2028\u2029"
        break_space = _BREAK_SPACE.search(scalar) is not None
        space_break = _SPACE_BREAK.search(scalar) is not None

        # From here on, PyYAML's own decision table.
        allow_flow_plain = allow_block_plain = allow_single_quoted = allow_block = True
        if leading or trailing:
            allow_flow_plain = allow_block_plain = False
        if trailing_space:
            allow_block = False
        if break_space:
            allow_flow_plain = allow_block_plain = allow_single_quoted = False
        if space_break or special:
            allow_flow_plain = allow_block_plain = allow_single_quoted = allow_block = False
        if line_breaks:
            allow_flow_plain = allow_block_plain = False
        if flow:
            allow_flow_plain = False
        if block:
            allow_block_plain = False
        return ScalarAnalysis(
            scalar=scalar,
            empty=False,
            multiline=line_breaks,
            allow_flow_plain=allow_flow_plain,
            allow_block_plain=allow_block_plain,
            allow_single_quoted=allow_single_quoted,
            allow_double_quoted=True,
            allow_block=allow_block,
        )

    def write_double_quoted(self, text: str, split: bool = True) -> None:
        """PyYAML's loop, visiting only the positions where it can act.

        Those are escaped characters, the position after each (where it may fold), spaces (where
        it may fold) and the end; between them it only advances.
        """
        self.write_indicator('"', True)
        escaped = (_ESCAPED_UNICODE if self.allow_unicode else _ESCAPED).finditer(text)
        escapes = {m.start() for m in escaped}
        spaces = {m.start() for m in re.finditer(" ", text)}
        start = 0
        for end in sorted(escapes | {i + 1 for i in escapes} | spaces | {len(text)}):
            ch = text[end] if end < len(text) else None
            if ch is None or end in escapes:
                if start < end:
                    self._put(text[start:end])
                    start = end
                if ch is not None:
                    if ch in self.ESCAPE_REPLACEMENTS:
                        self._put("\\" + self.ESCAPE_REPLACEMENTS[ch])
                    elif ch <= "\xff":
                        self._put(f"\\x{ord(ch):02X}")
                    elif ch <= "\uffff":
                        self._put(f"\\u{ord(ch):04X}")
                    else:
                        self._put(f"\\U{ord(ch):08X}")
                    start = end + 1
            if (
                0 < end < len(text) - 1
                and (ch == " " or start >= end)
                and self.column + (end - start) > self.best_width
                and split
            ):
                data = text[start:end] + "\\"
                if start < end:
                    start = end
                self._put(data)
                self.write_indent()
                self.whitespace = False
                self.indention = False
                if text[start] == " ":
                    self._put("\\")
        self.write_indicator('"', False)

    def _put(self, data: str) -> None:
        self.column += len(data)
        self.stream.write(data.encode(self.encoding) if self.encoding else data)
