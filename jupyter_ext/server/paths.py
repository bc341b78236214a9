"""What a request may name and send: notebook paths inside the server's root, JSON bodies of known
fields and bounded size, and `ApiError`, the 4xx every handler answers a bad request with."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from tornado import web

MAX_BODY_BYTES = 1 << 20  # requests are a path and a few parameters: a megabyte is plenty
MAX_BODY_DEPTH = 32  # lists and objects in parameter values, nested


class ApiError(web.HTTPError):
    """A 4xx whose JSON body is ``{"message", ...extra}``."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(status, message.replace("%", "%%"))
        self.message = message
        self.extra = extra


def resolve_notebook(root: Path, given: object) -> Path:
    """The notebook file `given` (relative to `root`) names, or an `ApiError` saying why not."""
    if not isinstance(given, str) or not given.strip():
        raise ApiError(400, "'path' must be a non-empty string, relative to the server's root directory")
    if "\0" in given:
        raise ApiError(400, "'path' contains a NUL character")
    posix, windows = PurePosixPath(given), PureWindowsPath(given)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or given.startswith(("/", "\\")):
        raise ApiError(400, f"{given}: absolute paths are not allowed; give one relative to the server root")
    if ".." in posix.parts or ".." in windows.parts:
        raise ApiError(400, f"{given}: '..' is not allowed in notebook paths")
    real_root = root.resolve()
    target = (real_root / posix).resolve()
    if not target.is_relative_to(real_root):
        raise ApiError(403, f"{given}: resolves outside the server's root directory")
    if not target.exists():
        raise ApiError(404, f"{given}: no such notebook")
    if not target.is_file() or target.suffix != ".ipynb":
        raise ApiError(400, f"{given}: not a notebook (.ipynb file)")
    return target


def shown_path(root: Path, path: str) -> str:
    """A path as clients should see it: relative to the server root when it is inside."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return path


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", dict: "an object", bool: "true or false", int: "an integer", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _too_deep(value: object, limit: int) -> bool:
    """Is `value` nested more than `limit` lists/objects deep? (Iterative: no recursion to exhaust.)"""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def parse_body(body: bytes, required: Mapping[str, type], optional: Mapping[str, type]) -> dict[str, Any]:
    """The request's JSON object with its fields checked, or a 4xx naming the first thing wrong.

    Bodies are capped in size and nesting depth: a huge or deeply nested body is refused before
    anything (json, parameter checks, the run store) walks it."""
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted")
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the request body is not valid JSON ({error})") from None
    except RecursionError:
        data = None
        deep = True
    else:
        deep = _too_deep(data, MAX_BODY_DEPTH)
    if deep:
        raise ApiError(400, f"the request body is nested too deeply (at most {MAX_BODY_DEPTH} levels)")
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join(sorted({*required, *optional}))
        fields = f"field{'s' * (len(unknown) > 1)} {', '.join(unknown)}"
        raise ApiError(400, f"unknown {fields} (allowed: {allowed})")
    for name in required:
        if name not in data:
            raise ApiError(400, f"missing field {name!r}")
    for name, kind in {**required, **optional}.items():
        if name not in data:
            continue
        value = data[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ApiError(400, f"field {name!r} must be {_type_name(kind)}, not {json.dumps(value)[:60]}")
    return data
