"""Cell tags and the structured `metadata.cellpipe` form, parsed into one settings vocabulary.

Both forms (and Kale's aliases) land in a `Settings` dict keyed like `StepSettings`; merging
patches in order (notebook defaults, then tags, then structured metadata) gives a step's
final `StepSettings`. Every malformed value becomes a `Problem`, never an exception, so
validation can report all of them at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from converter.model import (
    DEFAULT_GPU_VENDOR,
    Problem,
    Resources,
    SecretEnv,
    StepSettings,
    Toleration,
    VolumeMount,
)

Role = Literal["imports", "functions", "parameters", "metrics", "skip"]
Settings = dict[str, Any]

STEP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_CPU = re.compile(r"^(?:\d+m|\d+(?:\.\d+)?|\.\d+)$")
_MEMORY = re.compile(r"^\d+(?:E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_DURATION_PART = re.compile(r"(\d+)([smhd])")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

ROLE_TAGS: Mapping[str, Role] = {
    "imports": "imports",
    "functions": "functions",
    "parameters": "parameters",
    "pipeline-parameters": "parameters",
    "metrics": "metrics",
    "pipeline-metrics": "metrics",
    "skip": "skip",
}

RAISES_TAG = "raises-exception"  # papermill's and nbclient's: the cell is expected to raise

# Settings that accumulate across tags instead of the last one winning.
LIST_SETTINGS = (
    "packages",
    "env",
    "secrets",
    "node_selector",
    "tolerations",
    "labels",
    "annotations",
    "volumes",
)


@dataclass
class CellTags:
    """What one cell's tags and structured metadata say."""

    index: int
    step: str | None = None  # this cell starts step NAME
    continues: bool = False  # a bare `step:`/`block:`: continue the step above
    role: Role | None = None
    after: list[str] = field(default_factory=list)
    settings: Settings = field(default_factory=dict)  # from tags
    structured: Settings = field(default_factory=dict)  # from metadata.cellpipe
    search: dict[str, str] = field(default_factory=dict)
    raises: bool = False  # papermill's `raises-exception`: an error here is shown and the run goes on


class _Sink:
    """Collects problems for one cell so parse helpers stay short."""

    def __init__(self, notebook: str, cell: int | None, problems: list[Problem]):
        self.notebook, self.cell, self.problems = notebook, cell, problems

    def error(self, tag: str | None, message: str) -> None:
        self.problems.append(Problem(self.notebook, self.cell, tag, "error", message))

    def warn(self, tag: str | None, message: str) -> None:
        self.problems.append(Problem(self.notebook, self.cell, tag, "warning", message))


def check_step_name(name: str) -> str | None:
    """Why `name` is not a valid step name, or None."""
    if not name:
        return "a step name cannot be empty"
    if not STEP_NAME.match(name):
        return (
            f"invalid step name {name!r}: use lowercase letters, digits, '-' and '_', "
            "start with a letter, at most 63 characters"
        )
    return None


def parse_cpu(value: object) -> str | None:
    text = str(value).strip()
    if isinstance(value, bool) or not _CPU.match(text) or cpu_cores(text) <= 0:
        return None
    return text


def cpu_cores(text: str) -> float:
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


_MEMORY_FACTORS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_memory(value: object) -> str | None:
    text = str(value).strip()
    if isinstance(value, bool) or not _MEMORY.match(text) or memory_bytes(text) <= 0:
        return None
    return text


def memory_bytes(text: str) -> int:
    digits = re.match(r"\d+", text)
    assert digits is not None
    return int(digits.group()) * _MEMORY_FACTORS[text[digits.end() :]]


def parse_duration(value: object) -> int | None:
    """`90s`, `30m`, `2h`, `1h30m` or a bare number of seconds, as seconds (>0)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    text = str(value).strip()
    if text.isdigit():
        return int(text) or None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    seconds = sum(int(n) * _SECONDS[u] for n, u in parts)
    return seconds or None


def _positive_int(value: object, allow_zero: bool = False) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        number = int(value)
    else:
        return None
    return number if number > 0 or (allow_zero and number == 0) else None


def _switch(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    return {"on": True, "enabled": True, "true": True, "off": False, "disabled": False, "false": False}.get(
        str(value).strip().lower()
    )


def _key_value(text: str, sep: str) -> tuple[str, str] | None:
    key, found, value = text.partition(sep)
    return (key, value) if found and key else None


def parse_tags(notebook: str, index: int, tags: Sequence[str], problems: list[Problem]) -> CellTags:
    """Parse one cell's tag list; unknown tags warn, malformed values are errors."""
    cell = CellTags(index)
    sink = _Sink(notebook, index, problems)
    for raw in tags:
        tag = raw.strip()
        if not tag:
            continue
        if tag in ROLE_TAGS:
            _set_role(cell, ROLE_TAGS[tag], tag, sink)
            continue
        if tag == RAISES_TAG:
            cell.raises = True
            continue
        prefix, colon, value = tag.partition(":")
        if not colon:
            sink.warn(tag, f"unknown tag {tag!r} ignored")
            continue
        if prefix in ("step", "block"):
            if not value:
                cell.continues = True
            elif (why := check_step_name(value)) is not None:
                sink.error(tag, why)
            else:
                if cell.step is not None and cell.step != value:
                    sink.error(tag, f"the cell already starts step {cell.step!r}")
                cell.step = value
        elif prefix in ("after", "prev"):
            if not value:
                sink.error(tag, "after: needs a step name")
            else:
                cell.after.append(value)
        elif prefix == "limit":
            _parse_limit(value, tag, cell.settings, sink)
        else:
            _apply_setting(prefix.replace("-", "_"), value, tag, cell.settings, sink, from_tag=True)
    return cell


def _set_role(cell: CellTags, role: Role, tag: str, sink: _Sink) -> None:
    if cell.role is not None and cell.role != role:
        sink.error(tag, f"a cell cannot be both {cell.role!r} and {role!r}")
    cell.role = role


def _parse_limit(value: str, tag: str, settings: Settings, sink: _Sink) -> None:
    """Kale's `limit:RESOURCE:AMOUNT` form."""
    resource, _, amount = value.rpartition(":")
    if resource == "cpu":
        _apply_setting("cpu_limit", amount, tag, settings, sink, from_tag=True)
    elif resource == "memory":
        _apply_setting("memory_limit", amount, tag, settings, sink, from_tag=True)
    elif resource.endswith("/gpu"):
        _apply_setting("gpu", amount, tag, settings, sink, from_tag=True)
        settings["gpu_vendor"] = resource
    else:
        sink.error(tag, f"unknown resource {resource!r} in limit: (use cpu, memory or VENDOR/gpu)")


_SETTING_KEYS = (
    "cpu",
    "cpu_limit",
    "memory",
    "memory_limit",
    "gpu",
    "gpu_vendor",
    "gpu_type",
    "image",
    "packages",
    "retries",
    "timeout",
    "cache",
    "env",
    "secret",
    "secrets",
    "node_selector",
    "toleration",
    "tolerations",
    "label",
    "labels",
    "annotation",
    "annotations",
    "volume",
    "volumes",
    "report",
    "serve",
    "serve_min_replicas",
    "serve_max_replicas",
    "canary",
)
SERVE_FRAMEWORKS = ("sklearn", "xgboost", "pytorch", "custom")


def _apply_setting(key: str, value: Any, tag: str, settings: Settings, sink: _Sink, from_tag: bool) -> None:
    """Validate one setting and store it under its StepSettings-shaped key."""

    def bad(expected: str) -> None:
        sink.error(tag, f"{value!r} is not a valid {key.replace('_', '-')} value (expected {expected})")

    if key in ("cpu", "cpu_limit"):
        cpu = parse_cpu(value)
        if cpu is None:
            return bad("a CPU quantity such as 500m, 1 or 2.5")
        settings["cpu_request" if key == "cpu" else "cpu_limit"] = cpu
    elif key in ("memory", "memory_limit"):
        memory = parse_memory(value)
        if memory is None:
            return bad("a memory quantity such as 512Mi, 4Gi or 1G")
        settings["memory_request" if key == "memory" else "memory_limit"] = memory
    elif key == "gpu":
        count = _positive_int(value)
        if count is None:
            return bad("a positive whole number of GPUs")
        settings["gpu"] = count
    elif key in ("gpu_vendor", "gpu_type", "image"):
        text = str(value).strip()
        if not text or " " in text:
            return bad("a non-empty value without spaces")
        settings[key] = text
    elif key == "packages":
        items = value if isinstance(value, list) else str(value).split(",")
        packages = [str(p).strip() for p in items if str(p).strip()]
        if not packages:
            return bad("a comma-separated list of pip requirements")
        settings.setdefault("packages", []).extend(packages)
    elif key == "retries":
        retries = _positive_int(value, allow_zero=True)
        if retries is None:
            return bad("a whole number such as 3")
        settings["retries"] = retries
    elif key == "timeout":
        seconds = parse_duration(value)
        if seconds is None:
            return bad("a duration such as 90s, 30m or 2h")
        settings["timeout_seconds"] = seconds
    elif key in ("cache", "report"):
        switch = _switch(value)
        if switch is None:
            return bad("on or off")
        settings[key] = switch
    elif key == "env":
        pairs = value.items() if isinstance(value, dict) else [_key_value(str(value), "=")]
        for pair in pairs:
            if pair is None or not _ENV_NAME.match(pair[0]):
                return bad("NAME=VALUE with a valid variable name")
            settings.setdefault("env", []).append((pair[0], str(pair[1])))
    elif key in ("secret", "secrets"):
        for item in value if isinstance(value, list) else [value]:
            secret = _parse_secret(item)
            if secret is None:
                return bad("SECRET:KEY:ENV, the Kubernetes secret, its key and the variable name")
            settings.setdefault("secrets", []).append(secret)
    elif key == "node_selector":
        pairs = value.items() if isinstance(value, dict) else [_key_value(str(value), "=")]
        for pair in pairs:
            if pair is None or not _LABEL_KEY.match(pair[0]):
                return bad("KEY=VALUE with a valid label key")
            settings.setdefault("node_selector", []).append((pair[0], str(pair[1])))
    elif key in ("toleration", "tolerations"):
        for item in value if isinstance(value, list) else [value]:
            toleration = _parse_toleration(item)
            if toleration is None:
                return bad("KEY=VALUE:EFFECT, EFFECT one of " + ", ".join(_EFFECTS))
            settings.setdefault("tolerations", []).append(toleration)
    elif key in ("label", "labels", "annotation", "annotations"):
        target = "labels" if key.startswith("label") else "annotations"
        pairs = value.items() if isinstance(value, dict) else [_key_value(str(value), ":")]
        for pair in pairs:
            if pair is None or not _LABEL_KEY.match(pair[0]):
                return bad("KEY:VALUE with a valid Kubernetes key")
            settings.setdefault(target, []).append((pair[0], str(pair[1])))
    elif key in ("volume", "volumes"):
        for item in value if isinstance(value, list) else [value]:
            volume = _parse_volume(item)
            if volume is None:
                return bad("PVC:/mount/path, an existing PersistentVolumeClaim and an absolute path")
            settings.setdefault("volumes", []).append(volume)
    elif key == "serve":
        framework, _, variable = str(value).strip().partition(":")
        if framework not in SERVE_FRAMEWORKS:
            return bad("one of " + ", ".join(SERVE_FRAMEWORKS) + ", optionally followed by :VARIABLE")
        if variable and not variable.isidentifier():
            return bad("FRAMEWORK:VARIABLE with a Python variable name")
        settings["serve"] = framework
        settings["serve_variable"] = variable or None
    elif key in ("serve_min_replicas", "serve_max_replicas"):
        replicas = _positive_int(value, allow_zero=key == "serve_min_replicas")
        if replicas is None:
            return bad("a whole number of replicas")
        settings[key] = replicas
    elif key == "canary":
        percent = _positive_int(str(value).strip().rstrip("%"), allow_zero=True)
        if percent is None or percent > 100:
            return bad("a traffic percentage from 0 to 100")
        settings["canary_percent"] = percent
    else:
        sink.warn(tag, f"unknown {'tag' if from_tag else 'setting'} {tag!r} ignored")
    return None


def _parse_secret(item: object) -> SecretEnv | None:
    if isinstance(item, dict):
        parts = [str(item.get(k, "")) for k in ("secret", "key", "env")]
    else:
        parts = str(item).split(":")
    if len(parts) != 3 or not _K8S_NAME.match(parts[0]) or not parts[1] or not _ENV_NAME.match(parts[2]):
        return None
    return SecretEnv(*parts)


def _parse_toleration(item: object) -> Toleration | None:
    if isinstance(item, dict):
        key, value, effect = (str(item.get(k, "")) for k in ("key", "value", "effect"))
    else:
        rest, _, effect = str(item).rpartition(":")
        key, _, value = rest.partition("=")
    if not key or effect not in _EFFECTS:
        return None
    return Toleration(key, value, effect)


def _parse_volume(item: object) -> VolumeMount | None:
    if isinstance(item, dict):
        pvc, path = (
            str(item.get("pvc", item.get("name", ""))),
            str(item.get("mount_path", item.get("path", ""))),
        )
    else:
        pvc, _, path = str(item).partition(":")
    if not _K8S_NAME.match(pvc) or not path.startswith("/"):
        return None
    return VolumeMount(pvc, path)


def parse_structured(
    notebook: str,
    index: int | None,
    data: object,
    problems: list[Problem],
    *,
    where: str = "metadata.cellpipe",
) -> tuple[Settings, dict[str, Any]]:
    """Parse a `metadata.cellpipe` object: (settings, the non-setting keys such as step, after, role)."""
    sink = _Sink(notebook, index, problems)
    settings: Settings = {}
    other: dict[str, Any] = {}
    if not isinstance(data, dict):
        sink.error(where, f"{where} must be a JSON object, not {type(data).__name__}")
        return settings, other
    for key in sorted(data):
        value = data[key]
        if key in ("step", "after", "role", "search", "name", "description", "experiment", "defaults"):
            other[key] = value
        elif key in _SETTING_KEYS or key in ("cpu_request", "memory_request", "timeout_seconds"):
            normalized = {"cpu_request": "cpu", "memory_request": "memory", "timeout_seconds": "timeout"}.get(
                key, key
            )
            _apply_setting(normalized, value, f"{where}.{key}", settings, sink, from_tag=False)
        else:
            sink.warn(f"{where}.{key}", f"unknown setting {key!r} in {where} ignored")
    return settings, other


# List settings of (key, value) pairs: a later value for the same key replaces the earlier one.
KEYED_SETTINGS = ("env", "node_selector", "labels", "annotations")


def merge(patches: Sequence[Settings]) -> Settings:
    """Later patches win for single values and for the keys of keyed lists; lists accumulate."""
    merged: Settings = {}
    for patch in patches:
        for key, value in patch.items():
            if key in LIST_SETTINGS:
                bucket = merged.setdefault(key, [])
                for item in value:
                    if key in KEYED_SETTINGS:
                        bucket[:] = [old for old in bucket if old[0] != item[0] or old == item]
                    if item not in bucket:
                        bucket.append(item)
            else:
                merged[key] = value
    return merged


def to_step_settings(settings: Settings) -> StepSettings:
    resources = Resources(
        cpu_request=settings.get("cpu_request"),
        cpu_limit=settings.get("cpu_limit"),
        memory_request=settings.get("memory_request"),
        memory_limit=settings.get("memory_limit"),
        gpu=settings.get("gpu"),
        gpu_vendor=settings.get("gpu_vendor", DEFAULT_GPU_VENDOR),
        gpu_type=settings.get("gpu_type"),
    )
    return StepSettings(
        resources=resources,
        image=settings.get("image"),
        packages=tuple(settings.get("packages", ())),
        retries=settings.get("retries"),
        timeout_seconds=settings.get("timeout_seconds"),
        cache=settings.get("cache"),
        env=tuple(settings.get("env", ())),
        secrets=tuple(settings.get("secrets", ())),
        node_selector=tuple(settings.get("node_selector", ())),
        tolerations=tuple(settings.get("tolerations", ())),
        labels=tuple(settings.get("labels", ())),
        annotations=tuple(settings.get("annotations", ())),
        volumes=tuple(settings.get("volumes", ())),
        report=settings.get("report", True),
        serve=settings.get("serve"),
        serve_variable=settings.get("serve_variable"),
        serve_min_replicas=settings.get("serve_min_replicas"),
        serve_max_replicas=settings.get("serve_max_replicas"),
        canary_percent=settings.get("canary_percent"),
    )


def check_resources(notebook: str, cell: int, settings: StepSettings, problems: list[Problem]) -> None:
    """Requests above limits can never schedule: say so at compile time."""
    res = settings.resources
    sink = _Sink(notebook, cell, problems)
    if res.cpu_request and res.cpu_limit and cpu_cores(res.cpu_request) > cpu_cores(res.cpu_limit):
        sink.error("cpu-limit", f"CPU request {res.cpu_request} is above its limit {res.cpu_limit}")
    if (
        res.memory_request
        and res.memory_limit
        and memory_bytes(res.memory_request) > memory_bytes(res.memory_limit)
    ):
        sink.error(
            "memory-limit", f"memory request {res.memory_request} is above its limit {res.memory_limit}"
        )
    if (res.gpu_type or res.gpu_vendor != DEFAULT_GPU_VENDOR) and not res.gpu:
        sink.warn("gpu-type", "a GPU type or vendor is set but no gpu: count; no GPU is requested")
    low, high = settings.serve_min_replicas, settings.serve_max_replicas
    if low is not None and high is not None and low > high:
        sink.error("serve-max-replicas", f"serve-min-replicas {low} is above serve-max-replicas {high}")
    if settings.serve is None and (
        low is not None or high is not None or settings.canary_percent is not None
    ):
        sink.warn("serve", "serve-min-replicas, serve-max-replicas and canary need a serve:FRAMEWORK tag")
