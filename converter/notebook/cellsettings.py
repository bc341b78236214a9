"""One cell's settings as the step form shows and edits them: each value with where it came from.

A cell's settings may be written as plain tags (`cpu:500m`), Kale tags (`limit:cpu:2`, `block:load`)
or its structured `metadata.cellpipe`; the reader merges them (structured wins). The JupyterLab form
must show what the reader sees and, when the user edits a value, change it where it was written, so a
notebook never carries two copies that disagree. This module is that mapping, kept next to the tag
parser (`tags.py`) so the lab extension holds no copy of the vocabulary: the server sends each
field's text and its source (`describe`), and turns a filled-in form back into tags and metadata
(`edit`), checking the result with the same parser the reader uses.

Field keys are the structured form's keys (`cpu`, `cpu_limit`, `secrets`...); values are the text a
form field holds: lists comma-separated, key/value and line settings one per line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from converter.model import Problem
from converter.notebook import tags

Source = Literal["tag", "kale", "metadata"]
Kind = Literal["text", "list", "int", "switch", "pairs", "lines", "role"]
Target = Literal["keep", "tags", "metadata"]

# Every field the form manages, in its order, with how its text is written.
FIELDS: Mapping[str, Kind] = {
    "role": "role",
    "step": "text",
    "after": "list",
    "cpu": "text",
    "cpu_limit": "text",
    "memory": "text",
    "memory_limit": "text",
    "gpu": "int",
    "gpu_vendor": "text",
    "gpu_type": "text",
    "image": "text",
    "packages": "list",
    "retries": "int",
    "timeout": "text",
    "cache": "switch",
    "report": "switch",
    "env": "pairs",
    "secrets": "lines",
    "node_selector": "pairs",
    "tolerations": "lines",
    "labels": "pairs",
    "annotations": "pairs",
    "volumes": "lines",
}
LABELS: Mapping[str, str] = {
    "role": "Role (instead of a step)",
    "step": "Step name",
    "after": "After steps",
    "cpu": "CPU request",
    "cpu_limit": "CPU limit",
    "memory": "Memory request",
    "memory_limit": "Memory limit",
    "gpu": "GPUs",
    "gpu_vendor": "GPU vendor",
    "gpu_type": "GPU type",
    "image": "Image",
    "packages": "Packages",
    "retries": "Retries",
    "timeout": "Timeout",
    "cache": "Cache",
    "report": "HTML report",
    "env": "Environment (NAME=VALUE per line)",
    "secrets": "Secrets (SECRET:KEY:ENV per line)",
    "node_selector": "Node selector (KEY=VALUE per line)",
    "tolerations": "Tolerations (KEY=VALUE:EFFECT per line)",
    "labels": "Pod labels (KEY:VALUE per line)",
    "annotations": "Pod annotations (KEY:VALUE per line)",
    "volumes": "Volumes (PVC:/mount/path per line)",
}
ROLES = ("imports", "functions", "parameters", "metrics", "skip")

# Tag prefix (as written, `-` or `_`) -> field; the prefix a new tag of the field is written with.
_TAG_FIELDS = {
    "step": "step",
    "block": "step",
    "after": "after",
    "prev": "after",
    "secret": "secrets",
    "toleration": "tolerations",
    "label": "labels",
    "annotation": "annotations",
    "volume": "volumes",
    **{key: key for key in FIELDS if key != "role"},
}
_TAG_PREFIX = {
    "step": "step",
    "after": "after",
    "cpu_limit": "cpu-limit",
    "memory_limit": "memory-limit",
    "gpu_vendor": "gpu-vendor",
    "gpu_type": "gpu-type",
    "secrets": "secret",
    "node_selector": "node-selector",
    "tolerations": "toleration",
    "labels": "label",
    "annotations": "annotation",
    "volumes": "volume",
}
_KALE_PREFIXES = ("block", "prev", "limit")
_KALE_ROLES = ("pipeline-parameters", "pipeline-metrics")
# Structured keys the reader accepts under another name.
_METADATA_ALIASES = {
    "cpu_request": "cpu",
    "memory_request": "memory",
    "timeout_seconds": "timeout",
    "secret": "secrets",
    "toleration": "tolerations",
    "label": "labels",
    "annotation": "annotations",
    "volume": "volumes",
}
_PAIR_SEPARATOR = {"env": "=", "node_selector": "=", "labels": ":", "annotations": ":"}
# Fields whose values accumulate across tags and metadata instead of one copy winning.
_ACCUMULATE = frozenset(tags.LIST_SETTINGS) | {"after"}


@dataclass
class FieldView:
    """One field's effective text, where it came from, and copies the reader ignores."""

    value: str
    source: Source | Literal["tag+metadata"]
    tags: list[str] = field(default_factory=list)  # the tags that give it, as written
    overridden: list[str] = field(default_factory=list)  # tags metadata.cellpipe overrides

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "tags": self.tags, "overridden": self.overridden}


@dataclass
class CellView:
    fields: dict[str, FieldView]
    problems: list[Problem]

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": {key: view.to_json() for key, view in self.fields.items()},
            "problems": [problem.to_json() for problem in self.problems],
        }


def _split(tag: str) -> tuple[str, str]:
    prefix, _, value = tag.strip().partition(":")
    return prefix.strip(), value


def tag_fields(tag: str) -> dict[str, str]:
    """The fields one tag sets and each one's text ({} for tags the form does not manage)."""
    tag = tag.strip()
    if tag in tags.ROLE_TAGS:
        return {"role": tags.ROLE_TAGS[tag]}
    prefix, value = _split(tag)
    if ":" not in tag:
        return {}
    if prefix == "limit":
        resource, _, amount = value.rpartition(":")
        if resource == "cpu":
            return {"cpu_limit": amount}
        if resource == "memory":
            return {"memory_limit": amount}
        if resource.endswith("/gpu"):
            return {"gpu": amount, "gpu_vendor": resource}
        return {}
    key = _TAG_FIELDS.get(prefix.replace("-", "_"))
    if key is None or (key == "step" and not value):
        return {}  # unknown, or a bare `step:` that continues the step above (not a setting)
    return {key: value}


def _is_kale(tag: str) -> bool:
    tag = tag.strip()
    return tag in _KALE_ROLES or _split(tag)[0] in _KALE_PREFIXES


def _metadata_text(key: str, value: Any) -> str:
    """The form text of one structured value, in any shape the reader accepts."""
    kind = FIELDS[key]
    if value is None:
        return ""
    if kind == "switch" and isinstance(value, bool):
        return "on" if value else "off"
    if kind == "list":
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    if kind == "pairs":
        if isinstance(value, dict):
            return "\n".join(f"{k}{_PAIR_SEPARATOR[key]}{v}" for k, v in value.items())
        return "\n".join(map(str, value)) if isinstance(value, list) else str(value)
    if kind == "lines":
        items = value if isinstance(value, list) else [value]
        return "\n".join(_line_of(key, item) for item in items)
    return str(value)


def _line_of(key: str, item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    if key == "secrets":
        return f"{item.get('secret', '')}:{item.get('key', '')}:{item.get('env', '')}"
    if key == "tolerations":
        return f"{item.get('key', '')}={item.get('value', '')}:{item.get('effect', '')}"
    return f"{item.get('pvc', item.get('name', ''))}:{item.get('mount_path', item.get('path', ''))}"


def _join(key: str, parts: Sequence[str]) -> str:
    parts = [p.strip() for p in parts if p.strip()]
    if FIELDS[key] == "list":
        items = [item.strip() for p in parts for item in p.split(",") if item.strip()]
        return ", ".join(dict.fromkeys(items))
    if FIELDS[key] in ("pairs", "lines"):
        return "\n".join(dict.fromkeys(parts))
    return parts[-1] if parts else ""  # single values: the last tag wins, as in the reader


def structured_fields(cellpipe: object) -> dict[str, str]:
    """The managed fields a cell's `metadata.cellpipe` sets, as form text."""
    if not isinstance(cellpipe, dict):
        return {}
    found: dict[str, str] = {}
    for raw, value in cellpipe.items():
        key = _METADATA_ALIASES.get(str(raw), str(raw))
        if key in FIELDS:
            text = _metadata_text(key, value)
            found[key] = _join(key, [found[key], text]) if key in found else text
    return found


def describe(notebook: str, index: int, cell_tags: Sequence[str], cellpipe: object) -> CellView:
    """What the reader makes of one cell's own settings, field by field, and the cell's problems."""
    by_field: dict[str, list[tuple[str, str]]] = {}
    for tag in cell_tags:
        for key, text in tag_fields(str(tag)).items():
            by_field.setdefault(key, []).append((str(tag).strip(), text))
    structured = structured_fields(cellpipe)
    fields: dict[str, FieldView] = {}
    for key in FIELDS:
        tagged = by_field.get(key, [])
        tag_text = _join(key, [text for _, text in tagged])
        tag_names = [tag for tag, _ in tagged]
        tag_source: Source = "kale" if tagged and all(_is_kale(t) for t in tag_names) else "tag"
        if key in structured and structured[key] != "":
            if tagged and key in _ACCUMULATE:
                value = _join(key, [tag_text, structured[key]])
                fields[key] = FieldView(value, "tag+metadata", tag_names)
            else:
                overridden = [t for t, text in tagged if text.strip() != structured[key].strip()]
                fields[key] = FieldView(structured[key], "metadata", [], overridden)
        elif tagged:
            fields[key] = FieldView(tag_text, tag_source, tag_names)
    problems: list[Problem] = []
    tags.parse_tags(notebook, index, [str(t) for t in cell_tags], problems)
    if cellpipe is not None:
        tags.parse_structured(notebook, index, cellpipe, problems)
        if isinstance(cellpipe, dict) and "role" in cellpipe and str(cellpipe["role"]) not in tags.ROLE_TAGS:
            problems.append(
                Problem(
                    notebook,
                    index,
                    "metadata.cellpipe.role",
                    "error",
                    "role must be one of " + ", ".join(ROLES),
                )
            )
    if "role" in fields and "step" in fields:
        role = fields["role"].value
        problems.append(Problem(notebook, index, "step", "error", f"a {role} cell cannot also be a step"))
    return CellView(fields, problems)


# ---------------------------------------------------------------------- writing


def _tags_for(key: str, text: str, kale: bool) -> list[str]:
    """The tags that write `text` into field `key` (one per item for lists: tags hold no commas)."""
    kind = FIELDS[key]
    if kind == "role":
        return [text]
    if kind == "list":
        items = [item.strip() for item in text.split(",") if item.strip()]
    elif kind in ("pairs", "lines"):
        items = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        items = [text]
    if kale and key == "step":
        prefix = "block"
    elif kale and key == "after":
        prefix = "prev"
    elif kale and key in ("cpu_limit", "memory_limit"):
        prefix = f"limit:{key.removesuffix('_limit')}"
    else:
        prefix = _TAG_PREFIX.get(key, key)
    return [f"{prefix}:{item}" for item in items]


def _metadata_value(key: str, text: str) -> Any:
    """The structured value of a field's text, in the shape `docs/contract.md` shows."""
    kind = FIELDS[key]
    if kind == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    if kind == "int":
        return int(text) if text.isdigit() else text
    if kind == "switch":
        return {"on": True, "off": False}.get(text, text)
    if kind == "pairs":
        pairs: dict[str, str] = {}
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not all(line.find(_PAIR_SEPARATOR[key]) > 0 for line in lines):
            return lines  # the reader names the malformed line
        for line in lines:
            name, _, value = line.partition(_PAIR_SEPARATOR[key])
            pairs[name.strip()] = value.strip()
        return pairs
    if kind == "lines":
        return [line.strip() for line in text.splitlines() if line.strip()]
    return text


@dataclass
class Edited:
    tags: list[str]
    cellpipe: dict[str, Any] | None
    problems: list[Problem]


def edit(
    notebook: str,
    index: int,
    cell_tags: Sequence[str],
    cellpipe: object,
    values: Mapping[str, str],
    target: Target = "keep",
) -> Edited:
    """The cell's tags and `metadata.cellpipe` after the form's `values` are applied.

    `keep` changes each edited value where it is written (a tag stays a tag, a Kale tag keeps its
    Kale spelling, a structured value stays structured) and writes new values the way the cell
    already does (structured when it has a `metadata.cellpipe`, tags otherwise); `metadata` moves
    every managed setting into `metadata.cellpipe`, `tags` into plain tags. Either way, tags that
    `metadata.cellpipe` overrides are removed: no setting is left with two disagreeing copies.
    Tags and structured keys the form does not manage are kept as they are.
    """
    current = describe(notebook, index, cell_tags, cellpipe).fields
    structured: dict[str, Any] = dict(cellpipe) if isinstance(cellpipe, dict) else {}
    has_structured = any(_METADATA_ALIASES.get(k, k) in FIELDS for k in structured)
    wanted = {
        key: str(values.get(key, current[key].value if key in current else "")).strip() for key in FIELDS
    }
    # A Kale GPU limit sets the count and the vendor at once: change either, rewrite both.
    gpu_limit = [t for t in cell_tags if _split(str(t))[0] == "limit" and "gpu" in tag_fields(str(t))]
    changed = {
        key
        for key in FIELDS
        if wanted[key] != (current[key].value.strip() if key in current else "")
        or (key in current and current[key].overridden)
        or target != "keep"
    }
    if gpu_limit and changed & {"gpu", "gpu_vendor"}:
        changed |= {"gpu", "gpu_vendor"}
    for key in list(structured):
        if _METADATA_ALIASES.get(key, key) in changed:
            del structured[key]
    written: dict[str, list[str]] = {}  # field -> its new tags
    for key in FIELDS:
        text = wanted[key]
        if key not in changed or not text:
            continue
        view = current.get(key)
        if target == "metadata":
            where = "metadata"
        elif target == "tags":
            where = "tag"
        elif view is not None:
            where = "metadata" if view.source in ("metadata", "tag+metadata") else "tag"
        else:
            where = "metadata" if has_structured else "tag"
        if where == "metadata":
            structured[key] = _metadata_value(key, text)
            continue
        # The count and vendor of a Kale GPU limit are written as plain tags from here on.
        kale = (
            target == "keep"
            and view is not None
            and view.source == "kale"
            and key not in ("gpu", "gpu_vendor")
        )
        written[key] = _tags_for(key, text, kale)
    # A field's new tags take the place of its first old tag; new fields go at the end.
    new_tags: list[str] = []
    for raw in cell_tags:
        tag = str(raw)
        keys = [key for key in FIELDS if key in tag_fields(tag)]
        if not set(keys) & changed:
            new_tags.append(tag)
            continue
        for key in keys:
            new_tags.extend(written.pop(key, []))
    for key in FIELDS:
        new_tags.extend(written.pop(key, []))
    new_tags = list(dict.fromkeys(new_tags))
    ordered = {key: structured[key] for key in FIELDS if key in structured}
    ordered.update({key: value for key, value in structured.items() if key not in ordered})
    problems = describe(notebook, index, new_tags, ordered or None).problems
    return Edited(new_tags, ordered or None, problems)


def field_of(problem_tag: str | None) -> str | None:
    """The form field a problem's tag points at (`metadata.cellpipe.cpu`, `limit:cpu:x` -> `cpu_limit`)."""
    if not problem_tag:
        return None
    if problem_tag.startswith("metadata.cellpipe."):
        key = problem_tag.removeprefix("metadata.cellpipe.").split(".")[0]
        key = _METADATA_ALIASES.get(key, key)
        return key if key in FIELDS else None
    found = list(tag_fields(problem_tag))
    if found:
        return found[0]
    key = _METADATA_ALIASES.get(problem_tag.replace("-", "_"), problem_tag.replace("-", "_"))
    return key if key in FIELDS else None
