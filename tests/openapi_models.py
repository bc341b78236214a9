"""Check a manifest against the OpenAPI model classes an official SDK ships (Katib, KServe, Kubernetes).

The SDKs are generated from the CRDs' OpenAPI schemas: each model class lists its fields
(`attribute_map`: python name -> JSON key) and their types (`openapi_types`). Walking a manifest
through them rejects unknown keys, wrong types and wrong nesting, with no hand-written shape.
Required fields are checked by building the model class itself (its setters refuse None).
"""

from __future__ import annotations

import datetime
import re
from types import ModuleType
from typing import Any

_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "datetime": (str, datetime.datetime),
    "date": (str, datetime.date),
}


def validate(value: Any, type_name: str, modules: list[ModuleType], path: str = "$") -> list[str]:
    """Every mismatch between `value` and the model type `type_name`, as `path: problem` lines."""
    if value is None:
        return []
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name])
        if type_name in ("int", "float") and isinstance(value, bool):
            ok = False
        return [] if ok else [f"{path}: {value!r} is not {type_name}"]
    if match := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, item in enumerate(value) for p in validate(item, match[1], modules, f"{path}[{i}]")]
    if match := re.fullmatch(r"dict\((\w+), (.+)\)", type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        return [p for k, item in value.items() for p in validate(item, match[2], modules, f"{path}.{k}")]
    cls = next((getattr(m, type_name) for m in modules if hasattr(m, type_name)), None)
    if cls is None:
        return [f"{path}: no model class {type_name} in the SDKs"]
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} object"]
    by_json = {json_key: name for name, json_key in cls.attribute_map.items()}
    problems = [f"{path}.{key}: not a field of {type_name}" for key in value if key not in by_json]
    for key, item in value.items():
        if key in by_json:
            problems += validate(item, cls.openapi_types[by_json[key]], modules, f"{path}.{key}")
    if not problems:
        try:
            cls(**{by_json[k]: v for k, v in value.items()})  # required fields: the setters refuse None
        except (ValueError, TypeError) as exc:
            problems.append(f"{path}: {type_name}: {exc}")
    return problems
