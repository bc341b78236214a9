"""Tag and structured-metadata parsing: every contract tag, every Kale alias, every malformed value."""

from __future__ import annotations

import pytest

from converter.model import Problem, SecretEnv, Toleration, VolumeMount
from converter.notebook import tags


def parse(*tag_list: str) -> tuple[tags.CellTags, list[Problem]]:
    problems: list[Problem] = []
    return tags.parse_tags("nb.ipynb", 3, list(tag_list), problems), problems


def settings_of(*tag_list: str) -> tags.Settings:
    cell, problems = parse(*tag_list)
    assert [p for p in problems if p.severity == "error"] == []
    return cell.settings


def test_step_and_kale_block_name_a_step() -> None:
    assert parse("step:train")[0].step == "train"
    assert parse("block:load_data")[0].step == "load_data"


def test_bare_step_and_block_continue_the_step_above() -> None:
    for tag in ("step:", "block:"):
        cell, problems = parse(tag)
        assert cell.continues and cell.step is None and problems == []


@pytest.mark.parametrize("tag", ["after:prep", "prev:prep"])
def test_after_and_prev(tag: str) -> None:
    assert parse(tag, "after:other")[0].after == ["prep", "other"]


@pytest.mark.parametrize(
    ("tag", "role"),
    [
        ("imports", "imports"),
        ("functions", "functions"),
        ("parameters", "parameters"),
        ("pipeline-parameters", "parameters"),
        ("metrics", "metrics"),
        ("pipeline-metrics", "metrics"),
        ("skip", "skip"),
    ],
)
def test_roles(tag: str, role: str) -> None:
    assert parse(tag)[0].role == role


def test_resources_and_kale_limits() -> None:
    s = settings_of(
        "cpu:500m", "cpu-limit:2", "memory:4Gi", "memory-limit:8Gi", "gpu:2", "gpu-type:nvidia-tesla-a100"
    )
    assert (s["cpu_request"], s["cpu_limit"], s["memory_request"], s["memory_limit"]) == (
        "500m",
        "2",
        "4Gi",
        "8Gi",
    )
    assert s["gpu"] == 2 and s["gpu_type"] == "nvidia-tesla-a100"
    kale = settings_of("limit:cpu:2", "limit:memory:8Gi", "limit:nvidia.com/gpu:2")
    assert (kale["cpu_limit"], kale["memory_limit"], kale["gpu"], kale["gpu_vendor"]) == (
        "2",
        "8Gi",
        2,
        "nvidia.com/gpu",
    )
    assert settings_of("gpu:1", "gpu-vendor:amd.com/gpu")["gpu_vendor"] == "amd.com/gpu"


def test_every_other_setting_tag() -> None:
    s = settings_of(
        "image:python:3.12-slim",
        "packages:pandas,scikit-learn==1.5.2",
        "retries:3",
        "timeout:1h30m",
        "cache:off",
        "env:TZ=UTC",
        "secret:wandb:api-key:WANDB_API_KEY",
        "node-selector:pool=gpu",
        "toleration:nvidia.com/gpu=present:NoSchedule",
        "label:team:ml",
        "annotation:example.com/owner:ana",
        "volume:cache-pvc:/mnt/cache",
        "report:off",
    )
    assert s["image"] == "python:3.12-slim"
    assert s["packages"] == ["pandas", "scikit-learn==1.5.2"]
    assert s["retries"] == 3 and s["timeout_seconds"] == 5400
    assert s["cache"] is False and s["report"] is False
    assert s["env"] == [("TZ", "UTC")]
    assert s["secrets"] == [SecretEnv("wandb", "api-key", "WANDB_API_KEY")]
    assert s["node_selector"] == [("pool", "gpu")]
    assert s["tolerations"] == [Toleration("nvidia.com/gpu", "present", "NoSchedule")]
    assert s["labels"] == [("team", "ml")] and s["annotations"] == [("example.com/owner", "ana")]
    assert s["volumes"] == [VolumeMount("cache-pvc", "/mnt/cache")]


@pytest.mark.parametrize(
    ("tag", "expected"), [("cache:disabled", False), ("cache:enabled", True), ("report:disabled", False)]
)
def test_kale_switch_aliases(tag: str, expected: bool) -> None:
    key = tag.split(":")[0]
    assert settings_of(tag)[key] is expected


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("memory:4gigs", "memory quantity"),
        ("memory:0", "memory quantity"),
        ("gpu:-1", "positive whole number"),
        ("gpu:0", "positive whole number"),
        ("cpu:abc", "CPU quantity"),
        ("cpu:0", "CPU quantity"),
        ("timeout:soon", "duration"),
        ("retries:many", "whole number"),
        ("cache:maybe", "on or off"),
        ("env:1BAD=x", "NAME=VALUE"),
        ("secret:only-two:parts", "SECRET:KEY:ENV"),
        ("toleration:key=value:Sometimes", "EFFECT"),
        ("volume:pvc:relative/path", "PVC:/mount/path"),
        ("step:9lives", "invalid step name"),
        ("step:Train", "invalid step name"),
        ("step:" + "a" * 64, "invalid step name"),
        ("limit:disk:5", "unknown resource"),
    ],
)
def test_malformed_values_are_errors_naming_the_tag(tag: str, fragment: str) -> None:
    _, problems = parse(tag)
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1
    assert errors[0].tag == tag and errors[0].cell == 3 and fragment in errors[0].message
    assert str(errors[0]).startswith(f"nb.ipynb: cell 3 [{tag}]: ")


def test_unknown_tag_is_only_a_warning() -> None:
    cell, problems = parse("favourite", "colour:blue")
    assert [p.severity for p in problems] == ["warning", "warning"]
    assert cell.settings == {}


def test_structured_form_uses_the_same_vocabulary() -> None:
    problems: list[Problem] = []
    settings, other = tags.parse_structured(
        "nb.ipynb",
        4,
        {
            "step": "train",
            "after": ["prep"],
            "cpu": "2",
            "memory": "4Gi",
            "gpu": 1,
            "gpu_type": "nvidia-tesla-a100",
            "env": {"A": "1"},
            "secrets": [{"secret": "s", "key": "k", "env": "E"}],
            "timeout": "30m",
            "cache": False,
        },
        problems,
    )
    assert problems == []
    assert other == {"step": "train", "after": ["prep"]}
    assert settings["cpu_request"] == "2" and settings["gpu"] == 1 and settings["timeout_seconds"] == 1800
    assert settings["secrets"] == [SecretEnv("s", "k", "E")] and settings["cache"] is False


def test_structured_form_rejects_bad_values_and_non_objects() -> None:
    problems: list[Problem] = []
    tags.parse_structured("nb.ipynb", 4, {"gpu": -1, "memory": "lots"}, problems)
    assert sorted(p.tag or "" for p in problems) == ["metadata.cellpipe.gpu", "metadata.cellpipe.memory"]
    problems.clear()
    tags.parse_structured("nb.ipynb", 4, ["step", "x"], problems)
    assert problems[0].severity == "error" and "JSON object" in problems[0].message


def test_merge_later_wins_and_lists_accumulate() -> None:
    merged = tags.merge(
        [{"retries": 1, "env": [("A", "1")]}, {"retries": 3, "env": [("B", "2"), ("A", "1")]}]
    )
    assert merged == {"retries": 3, "env": [("A", "1"), ("B", "2")]}


def test_request_above_limit_is_an_error() -> None:
    problems: list[Problem] = []
    settings = tags.to_step_settings(
        {"cpu_request": "2", "cpu_limit": "500m", "memory_request": "2Gi", "memory_limit": "1000Mi"}
    )
    tags.check_resources("nb.ipynb", 5, settings, problems)
    assert [p.tag for p in problems] == ["cpu-limit", "memory-limit"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("45", 45)]
)
def test_durations(text: str, seconds: int) -> None:
    assert tags.parse_duration(text) == seconds
