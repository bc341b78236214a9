"""Pipeline parameter values as users give them, checked and coerced to the declared types.

Shared by `cellpipe run` (papermill-style `-p NAME VALUE` / `-f params.yaml`), the Jupyter server
extension and the notebook widgets (typed JSON values), so every way of starting a run accepts
and refuses the same values with the same messages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from converter.errors import CellpipeError
from converter.model import Parameter, Pipeline

_TRUE, _FALSE = frozenset({"true", "yes", "on", "1"}), frozenset({"false", "no", "off", "0"})


class _NoDatesLoader(yaml.SafeLoader):
    """papermill's YAML loader: dates stay strings, as a notebook parameter expects."""


_NoDatesLoader.yaml_implicit_resolvers = {
    key: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def papermill_value(text: str) -> object:
    """A `-p` value typed exactly as papermill's `_resolve_type` types it."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parameter_values(
    pipeline: Pipeline,
    pairs: Sequence[Sequence[str]],
    files: Sequence[str],
    warn_unknown: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The user's `-f` files (in order), then `-p` pairs, checked and coerced to the declared types.

    Only the values the user gave are returned; the engine fills in the defaults. With
    `warn_unknown`, a name the notebook does not declare is left out with that warning, as
    papermill's command line does (`cellpipe run`); without it, it is an error.
    """
    given: dict[str, tuple[object, str | None]] = {}  # name -> (value, raw -p text if any)
    for file in files:
        for name, value in _read_parameter_file(Path(file)).items():
            given[str(name)] = (value, None)
    for name, raw in pairs:
        given[name] = (papermill_value(raw), raw)
    if warn_unknown is not None:
        declared = {p.name for p in pipeline.parameters}
        for name in sorted(set(given) - declared):
            warn_unknown(f"{pipeline.notebook}: passed unknown parameter {name!r}; ignored")
            del given[name]
    return _typed(pipeline, given)


def typed_values(pipeline: Pipeline, values: Mapping[str, object]) -> dict[str, Any]:
    """Values that arrive already typed (JSON from the REST API, Python from the widgets), checked
    and coerced to the declared types as `parameter_values` does."""
    return _typed(pipeline, {name: (value, None) for name, value in values.items()})


def _typed(pipeline: Pipeline, given: Mapping[str, tuple[object, str | None]]) -> dict[str, Any]:
    """`given` maps a name to (value, raw `-p` text or None)."""
    declared = {p.name: p for p in pipeline.parameters}
    values: dict[str, Any] = {}
    for name, (value, text) in given.items():
        parameter = declared.get(name)
        if parameter is None:
            known = ", ".join(sorted(declared)) or "none: it has no parameters cell"
            raise CellpipeError(f"{pipeline.notebook}: unknown parameter {name!r} (its parameters: {known})")
        values[name] = coerce(parameter, value, text, pipeline.notebook)
    return values


def _read_parameter_file(path: Path) -> Mapping[str, object]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoDatesLoader)
    except OSError as error:
        raise CellpipeError(f"{path}: cannot read the parameters file ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise CellpipeError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CellpipeError(f"{path}: a parameters file holds NAME: VALUE pairs, not a {type(data).__name__}")
    return data


def coerce(parameter: Parameter, value: object, raw: str | None, notebook: str) -> object:
    """`value` as the parameter's declared type, or a user error naming parameter, type and notebook.

    `raw` is the `-p` text: a `str` parameter keeps it as typed (papermill would turn `-p tag 1.10`
    into the float 1.1), and a list or dict parameter parses it as JSON/YAML.
    """
    kind = parameter.type

    def wrong(why: str = "") -> CellpipeError:
        shown = raw if raw is not None else value
        return CellpipeError(f"{notebook}: parameter {parameter.name!r} is {kind}; cannot use {shown!r}{why}")

    if value is None and raw is None and parameter.optional:
        return None  # `-f` can leave a `name = None` parameter unset
    if kind == "str":
        if raw is not None:
            return raw
        if isinstance(value, bool | int | float | str):
            return str(value)
        raise wrong()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, str | int) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise wrong(" (use true or false)")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise wrong(" (not a whole number)")
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf"):
            return float(value)
        raise wrong(" (not a number)")
    expected: type = list if kind == "list" else dict
    if raw is not None:
        try:
            value = yaml.load(raw, Loader=_NoDatesLoader)
        except yaml.YAMLError:
            raise wrong(" (not JSON or YAML)") from None
    if not isinstance(value, expected):
        example = "[1, 2]" if kind == "list" else '{"a": 1}'
        raise wrong(f" (give a JSON {kind} like {example})")
    if not _finite(value):
        raise wrong(" (NaN and infinity do not travel as JSON)")
    return value


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def render_parameter(value: object) -> str:
    """A parameter value as KFP puts it on a command line: str raw, bool true/false, list/dict JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)
