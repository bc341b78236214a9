"""The step form's mapping: each setting with its source; form edits written where the value came from."""

from __future__ import annotations

from converter.notebook import cellsettings as cs

PLAIN = ["step:load-data", "cpu:500m", "memory:1Gi", "imports-not-a-role", "retries:2", "timeout:30m"]


def fields(tags: list[str], cellpipe: object = None) -> dict[str, tuple[str, str, list[str]]]:
    view = cs.describe("nb.ipynb", 3, tags, cellpipe)
    return {key: (f.value, f.source, f.tags) for key, f in view.fields.items()}


def test_plain_tags_show_with_the_tag_that_sets_each_value() -> None:
    assert fields(PLAIN) == {
        "step": ("load-data", "tag", ["step:load-data"]),
        "cpu": ("500m", "tag", ["cpu:500m"]),
        "memory": ("1Gi", "tag", ["memory:1Gi"]),
        "retries": ("2", "tag", ["retries:2"]),
        "timeout": ("30m", "tag", ["timeout:30m"]),
    }


def test_kale_tags_roles_and_accumulating_lists() -> None:
    got = fields(["block:train", "prev:load", "limit:nvidia.com/gpu:2", "limit:memory:8Gi", "packages:a",
                  "packages:b", "env:A=1", "env:B=2"])  # fmt: skip
    assert got["step"] == ("train", "kale", ["block:train"])
    assert got["after"] == ("load", "kale", ["prev:load"])
    assert got["gpu"] == ("2", "kale", ["limit:nvidia.com/gpu:2"])
    assert got["gpu_vendor"] == ("nvidia.com/gpu", "kale", ["limit:nvidia.com/gpu:2"])
    assert got["memory_limit"] == ("8Gi", "kale", ["limit:memory:8Gi"])
    assert got["packages"] == ("a, b", "tag", ["packages:a", "packages:b"])
    assert got["env"] == ("A=1\nB=2", "tag", ["env:A=1", "env:B=2"])
    assert fields(["pipeline-parameters"])["role"] == ("parameters", "kale", ["pipeline-parameters"])
    assert fields(["imports"])["role"] == ("imports", "tag", ["imports"])


def test_metadata_wins_and_the_tag_it_overrides_is_named() -> None:
    view = cs.describe("nb.ipynb", 3, ["step:a", "cpu:1"], {"cpu": "2", "env": {"A": "1"}, "role": None})
    assert view.fields["cpu"].value == "2" and view.fields["cpu"].source == "metadata"
    assert view.fields["cpu"].overridden == ["cpu:1"]
    assert view.fields["env"].value == "A=1" and view.fields["step"].source == "tag"


def test_editing_a_tagged_value_changes_exactly_that_tag() -> None:
    edited = cs.edit("nb.ipynb", 3, PLAIN, None, {"cpu": "2", "memory": "1Gi"})
    assert edited.tags == [
        "step:load-data",
        "cpu:2",
        "memory:1Gi",
        "imports-not-a-role",
        "retries:2",
        "timeout:30m",
    ]
    assert edited.cellpipe is None
    removed = cs.edit("nb.ipynb", 3, PLAIN, None, {"retries": ""})
    assert removed.tags == [t for t in PLAIN if t != "retries:2"]


def test_new_values_follow_the_cells_style_and_kale_tags_keep_their_spelling() -> None:
    assert cs.edit("nb.ipynb", 1, ["step:a"], None, {"gpu": "1", "packages": "x, y"}).tags == [
        "step:a", "gpu:1", "packages:x", "packages:y"
    ]  # fmt: skip
    structured = cs.edit("nb.ipynb", 1, [], {"step": "a"}, {"cpu": "1"})
    assert structured.tags == [] and structured.cellpipe == {"step": "a", "cpu": "1"}
    kale = cs.edit("nb.ipynb", 1, ["block:a", "limit:cpu:1"], None, {"step": "b", "cpu_limit": "2"})
    assert kale.tags == ["block:b", "limit:cpu:2"]


def test_no_two_disagreeing_copies_are_left() -> None:
    edited = cs.edit("nb.ipynb", 3, ["step:a", "cpu:1", "search-me"], {"cpu": "2", "search": {"x": "1"}}, {})
    assert edited.tags == ["step:a", "search-me"]
    assert edited.cellpipe == {"cpu": "2", "search": {"x": "1"}}


def test_converting_to_metadata_moves_every_managed_tag() -> None:
    edited = cs.edit("nb.ipynb", 3, [*PLAIN, "env:A=1", "secret:s:k:ENV"], None, {}, "metadata")
    assert edited.tags == ["imports-not-a-role"]
    assert edited.cellpipe == {
        "step": "load-data", "cpu": "500m", "memory": "1Gi", "retries": 2, "timeout": "30m",
        "env": {"A": "1"}, "secrets": ["s:k:ENV"],
    }  # fmt: skip
    back = cs.edit("nb.ipynb", 3, edited.tags, edited.cellpipe, {}, "tags")
    assert back.cellpipe is None
    assert sorted(back.tags) == sorted([*PLAIN, "env:A=1", "secret:s:k:ENV"])


def test_a_bad_value_comes_back_as_the_readers_problem_on_its_field() -> None:
    edited = cs.edit("nb.ipynb", 3, ["step:a"], None, {"memory": "lots"})
    [problem] = [p for p in edited.problems if p.severity == "error"]
    assert problem.tag == "memory:lots" and "not a valid memory value" in problem.message
    assert cs.field_of(problem.tag) == "memory"
    assert cs.field_of("metadata.cellpipe.cpu_request") == "cpu"
    assert cs.field_of("limit:cpu:x") == "cpu_limit"


def test_a_role_and_a_step_on_one_cell_is_refused_however_written() -> None:
    for tags, cellpipe in [(["imports", "step:a"], None), (["step:a"], {"role": "skip"})]:
        [problem] = cs.describe("nb.ipynb", 2, tags, cellpipe).problems
        assert problem.severity == "error" and "cannot also be a step" in problem.message
