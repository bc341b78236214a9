"""The artifact store and cache: what a key depends on, moves without copies, races, lookups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converter.store.artifacts import ArtifactStore, CacheEntry, cache_key, output_digest


def key(
    program: str = "print(1)",
    inputs: dict[str, str] | None = None,
    parameters: dict[str, str] | None = None,
    image: str = "python:3.11",
    packages: tuple[str, ...] = ("pandas==2.2.0",),
    env: tuple[tuple[str, str], ...] = (("A", "1"),),
) -> str:
    inputs = {"x": "aa" * 16} if inputs is None else inputs
    parameters = {"n": "3"} if parameters is None else parameters
    return cache_key(program, inputs, parameters, image, packages, env)


def write_value(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "value.json").write_text(text)
    (folder / "meta.json").write_text('{"format": "json"}')
    return folder


@pytest.mark.parametrize(
    "change",
    [
        {"program": "print(2)"},
        {"inputs": {"x": "bb" * 16}},
        {"inputs": {"y": "aa" * 16}},
        {"parameters": {"n": "4"}},
        {"image": "python:3.12"},
        {"packages": ("pandas==2.2.1",)},
        {"env": (("A", "2"),)},
    ],
)
def test_every_part_of_an_execution_changes_the_key(change: dict[str, Any]) -> None:
    assert key(**change) != key()


def test_key_ignores_mapping_order() -> None:
    assert key(inputs={"a": "1", "b": "2"}) == key(inputs={"b": "2", "a": "1"})
    assert key(packages=("a", "b")) == key(packages=("b", "a"))


@given(st.text(), st.text(), st.text(), st.text())
def test_parts_cannot_bleed_into_each_other(a: str, b: str, c: str, d: str) -> None:
    if (a, b) != (c, d):
        assert key(program=a, image=b) != key(program=c, image=d)


def test_commit_moves_outputs_without_copying(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    staging = store.staging("run.step.1")
    folder = write_value(staging / "x", "[1, 2]")
    inode = (folder / "value.json").stat().st_ino
    digests = store.commit({"x": folder}, "k" * 32, None)
    target = store.path(digests["x"])
    assert target.parent.name == digests["x"][:2]
    assert (target / "value.json").stat().st_ino == inode  # renamed, not copied
    assert not folder.exists()
    assert digests["x"] == output_digest("k" * 32, "x")


def test_second_equal_execution_keeps_the_first_result(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    first = store.commit({"x": write_value(store.staging("a") / "x", "1")}, "k" * 32, None)
    late = write_value(store.staging("b") / "x", "2")
    second = store.commit({"x": late}, "k" * 32, None)
    assert first == second
    assert (store.path(first["x"]) / "value.json").read_text() == "1"
    assert not late.exists()


def test_uncacheable_executions_never_share_an_address(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    one = store.commit({"x": write_value(store.staging("a") / "x", "1")}, "k" * 32, "run1.s.1")
    two = store.commit({"x": write_value(store.staging("b") / "x", "2")}, "k" * 32, "run2.s.1")
    assert one["x"] != two["x"]
    assert (store.path(one["x"]) / "value.json").read_text() == "1"
    assert (store.path(two["x"]) / "value.json").read_text() == "2"


def test_missing_output_is_an_error_and_nothing_is_committed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    staging = store.staging("a")
    present = write_value(staging / "x", "1")
    with pytest.raises(FileNotFoundError, match="'y'"):
        store.commit({"x": present, "y": staging / "y"}, "k" * 32, None)
    assert present.exists()
    assert not store.exists(output_digest("k" * 32, "x"))


def test_lookup_hits_only_complete_and_present_entries(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    k = "c" * 32
    assert store.lookup(k, ["x"]) is None
    digests = store.commit({"x": write_value(store.staging("a") / "x", "1")}, k, None)
    entry = CacheEntry(digests, {"acc": 0.5}, "/runs/r/s", "r", "s")
    store.remember(k, entry)
    hit = store.lookup(k, ["x"])
    assert hit is not None and hit.outputs == digests and hit.metrics == {"acc": 0.5} and hit.time > 0
    assert store.lookup(k, ["x", "y"]) is None  # the step now has an output the entry lacks
    assert store.lookup("d" * 32, ["x"]) is None
    (store.path(digests["x"]) / "value.json").unlink()
    (store.path(digests["x"]) / "meta.json").unlink()
    store.path(digests["x"]).rmdir()
    assert store.lookup(k, ["x"]) is None  # artifacts deleted: a miss, not a broken input


def test_corrupt_cache_entry_is_a_miss(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    k = "e" * 32
    store.remember(k, CacheEntry({}, {}, "f", "r", "s"))
    assert store.lookup(k, []) is not None
    entry_file = next((tmp_path / "artifacts" / "cache").rglob("*.json"))
    entry_file.write_text("{not json")
    assert store.lookup(k, []) is None
    entry_file.write_text(json.dumps({"outputs": {}}))
    assert store.lookup(k, []) is None


def test_latest_remembered_execution_wins(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    k = "f" * 32
    store.remember(k, CacheEntry({}, {"m": 1.0}, "f", "r1", "s"))
    store.remember(k, CacheEntry({}, {"m": 2.0}, "f", "r2", "s"))
    hit = store.lookup(k, [])
    assert hit is not None and hit.run_id == "r2" and hit.metrics == {"m": 2.0}
    assert not list((tmp_path / "artifacts" / "cache").rglob(".*"))  # no temporary files left


def test_discard_run_drops_only_that_runs_staging(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    dead = write_value(store.staging("20261126-100000-aaaa.train.1") / "x", "1")
    alive = write_value(store.staging("20261126-100000-bbbb.train.1") / "x", "2")
    store.discard_run("20261126-100000-aaaa")
    assert not dead.exists() and alive.exists()
