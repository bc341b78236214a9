"""The DAG views: levels, text, REST JSON, dot source and rendered pictures."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from converter.errors import CellpipeError
from converter.model import (
    CodeCell,
    Edge,
    Parameter,
    Pipeline,
    Resources,
    SecretEnv,
    Step,
    StepSettings,
)
from converter.reports.graph import levels, render_image, render_text, to_dot, to_json

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="needs Graphviz's `dot` (apt-get install graphviz)"
)


def svg_texts(svg: bytes) -> list[str]:
    """The visible text of an SVG, which also proves it is well-formed XML."""
    root = ET.fromstring(svg)
    return [el.text or "" for el in root.iter("{http://www.w3.org/2000/svg}text")]


def step(
    name: str,
    cell: int,
    inputs: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    parameters: tuple[str, ...] = (),
    after: tuple[str, ...] = (),
    settings: StepSettings | None = None,
) -> Step:
    return Step(
        name=name,
        cells=(CodeCell(cell, "pass", "pass"), CodeCell(cell + 1, "pass", "pass")),
        inputs=inputs,
        outputs=outputs,
        parameters=parameters,
        metrics=(),
        after=after,
        packages=(),
        settings=settings or StepSettings(),
    )


def pipeline(
    steps: list[Step], edges: list[Edge], parameters: tuple[Parameter, ...] = (), name: str = "demo"
) -> Pipeline:
    return Pipeline(
        name=name,
        notebook="demo.ipynb",
        description="",
        experiment=None,
        image="python:3.11-slim",
        imports=(),
        functions=(),
        parameters=parameters,
        steps=tuple(steps),
        edges=tuple(edges),
    )


def diamond() -> Pipeline:
    """load -> (left_branch, right-branch) -> join, with resources, retries and a parameter."""
    return pipeline(
        [
            step("load", 1, outputs=("X", "y")),
            step(
                "left_branch",
                3,
                inputs=("X",),
                outputs=("a",),
                parameters=("C",),
                settings=StepSettings(
                    resources=Resources(cpu_request="1", memory_request="2Gi"), retries=2, cache=False
                ),
            ),
            step(
                "right-branch",
                5,
                inputs=("X", "y"),
                outputs=("b",),
                settings=StepSettings(resources=Resources(cpu_request="500m", cpu_limit="2")),
            ),
            step("join", 7, inputs=("a", "b")),
        ],
        # Deliberately not in sorted order: the outputs must sort them.
        [
            Edge("right-branch", "join", "data", ("b",)),
            Edge("load", "right-branch", "data", ("X", "y")),
            Edge("left_branch", "join", "data", ("a",)),
            Edge("load", "left_branch", "data", ("X",)),
        ],
        parameters=(Parameter("C", "float", 1.0, 0), Parameter("test_size", "float", 0.2, 0)),
        name="sklearn-tabular",
    )


def fan_out() -> Pipeline:
    """A source feeding four steps, one only by `after:`, and a collector after all of them."""
    workers = [f"w{i}" for i in range(4)]
    steps = [step("src", 1, outputs=("data",))]
    edges = []
    for i, w in enumerate(workers):
        if w == "w3":
            steps.append(step(w, 10 + 2 * i, after=("src",)))
            edges.append(Edge("src", w, "after"))
        else:
            steps.append(step(w, 10 + 2 * i, inputs=("data",), outputs=(f"r{i}",)))
            edges.append(Edge("src", w, "data", ("data",)))
    steps.append(step("collect", 30, inputs=("r0", "r1", "r2"), after=("w3",)))
    edges += [Edge(f"w{i}", "collect", "data", (f"r{i}",)) for i in range(3)]
    edges.append(Edge("w3", "collect", "after"))
    return pipeline(steps, edges)


def gpu_chain() -> Pipeline:
    names = tuple(f"feature_{i}" for i in range(6))
    return pipeline(
        [
            step("prepare", 1, outputs=names),
            step(
                "train",
                3,
                inputs=names,
                outputs=("model",),
                settings=StepSettings(
                    resources=Resources(gpu=2, gpu_type="nvidia-tesla-a100", memory_limit="16Gi"),
                    timeout_seconds=1800,
                    env=(("MODE", "fast"),),
                    secrets=(SecretEnv("s3-creds", "key", "AWS_SECRET_ACCESS_KEY"),),
                    image="ghcr.io/acme/train:1.0",
                ),
            ),
            step("evaluate", 5, inputs=("model",)),
        ],
        [Edge("prepare", "train", "data", names), Edge("train", "evaluate", "data", ("model",))],
    )


# --- levels -------------------------------------------------------------------------------------


def test_levels_of_a_diamond_put_both_branches_together() -> None:
    assert levels(diamond()) == [["load"], ["left_branch", "right-branch"], ["join"]]


def test_levels_use_the_longest_path_and_count_after_edges() -> None:
    # `collect` hangs directly off every worker, but w3 is reachable only by an after-edge.
    assert levels(fan_out()) == [["src"], ["w0", "w1", "w2", "w3"], ["collect"]]
    # A shortcut edge must not pull a step to an earlier level than its longest path.
    p = pipeline(
        [step("a", 1), step("b", 3), step("c", 5)],
        [Edge("a", "b", "data", ("x",)), Edge("b", "c", "data", ("y",)), Edge("a", "c", "data", ("z",))],
    )
    assert levels(p) == [["a"], ["b"], ["c"]]


def test_levels_do_not_rely_on_steps_being_listed_in_topological_order() -> None:
    p = pipeline([step("late", 5), step("early", 1)], [Edge("early", "late", "after")])
    assert levels(p) == [["early"], ["late"]]


def test_levels_reject_a_cycle_and_unknown_steps() -> None:
    cyclic = pipeline([step("a", 1), step("b", 3)], [Edge("a", "b", "after"), Edge("b", "a", "after")])
    with pytest.raises(ValueError, match="cycle"):
        levels(cyclic)
    dangling = pipeline([step("a", 1)], [Edge("ghost", "a", "after")])
    with pytest.raises(ValueError, match="ghost"):
        levels(dangling)


# --- text ---------------------------------------------------------------------------------------


def test_text_lists_every_step_once_on_its_level() -> None:
    for p in (diamond(), fan_out(), gpu_chain()):
        text = render_text(p)
        body = text.splitlines()[1:]
        assert len(body) == len(p.steps)
        current = None
        seen: dict[str, int] = {}
        for line in body:
            if line.startswith("level "):
                current = int(line.split()[1])
                name = line.split()[2]
            else:
                assert line.startswith(" "), line
                name = line.split()[0]
            assert current is not None
            seen[name] = current
        expected = {name: n for n, names in enumerate(levels(p)) for name in names}
        assert seen == expected


def test_text_header_inputs_and_resources() -> None:
    text = render_text(diamond())
    lines = text.splitlines()
    assert lines[0] == "pipeline sklearn-tabular (4 steps, 4 edges, parameters: C, test_size)"
    left = next(line for line in lines if "left_branch" in line)
    assert "<- load (X)" in left
    assert "cpu 1, mem 2Gi, retries 2, cache off" in left
    right = next(line for line in lines if "right-branch" in line)
    assert "<- load (X, y)" in right
    assert "cpu 500m (limit 2)" in right
    join = next(line for line in lines if "join" in line)
    assert "<- left_branch (a), right-branch (b)" in join
    assert "\x1b" not in text  # no colour codes


def test_text_marks_after_edges_truncates_long_inputs_and_shows_gpu() -> None:
    collect = next(line for line in render_text(fan_out()).splitlines() if "collect" in line)
    assert "w3 (after)" in collect
    assert "w0 (r0)" in collect
    chain = render_text(gpu_chain())
    train = next(line for line in chain.splitlines() if " train " in line)
    assert "<- prepare (feature_0, feature_1, feature_2, +3)" in train
    assert "mem limit 16Gi" in train
    assert "gpu 2 nvidia-tesla-a100" in train
    assert "timeout 30m" in train
    assert "image ghcr.io/acme/train:1.0" in train
    assert "fast" not in chain  # env values are not shown


def test_text_aligns_the_resource_column() -> None:
    lines = render_text(diamond()).splitlines()[1:]
    starts = {line.index("cpu") for line in lines if "cpu" in line}
    assert len(starts) == 1


# --- JSON ---------------------------------------------------------------------------------------


def test_json_shape_and_order() -> None:
    graph = to_json(diamond())
    assert json.loads(json.dumps(graph)) == graph
    assert graph["name"] == "sklearn-tabular"
    nodes = graph["nodes"]
    assert isinstance(nodes, list)
    assert [n["id"] for n in nodes] == ["load", "left_branch", "right-branch", "join"]
    left = nodes[1]
    assert left == {
        "id": "left_branch",
        "cells": [3, 4],
        "inputs": ["X"],
        "outputs": ["a"],
        "parameters": ["C"],
        "metrics": [],
        "resources": {"cpu": "1", "memory": "2Gi"},
        "image": "python:3.11-slim",
        "retries": 2,
        "timeout_seconds": None,
        "cache": False,
        "env": [],
        "level": 1,
    }
    assert nodes[0]["resources"] == {}
    assert nodes[0]["cache"] is True
    assert [n["level"] for n in nodes] == [0, 1, 1, 2]
    assert graph["edges"] == [
        {"source": "load", "target": "left_branch", "kind": "data", "names": ["X"]},
        {"source": "load", "target": "right-branch", "kind": "data", "names": ["X", "y"]},
        {"source": "left_branch", "target": "join", "kind": "data", "names": ["a"]},
        {"source": "right-branch", "target": "join", "kind": "data", "names": ["b"]},
    ]
    assert graph["parameters"] == [
        {"name": "C", "type": "float", "default": 1.0},
        {"name": "test_size", "type": "float", "default": 0.2},
    ]


def test_json_gpu_resources_env_names_and_no_secret_details() -> None:
    graph = to_json(gpu_chain())
    nodes = graph["nodes"]
    assert isinstance(nodes, list)
    train = nodes[1]
    assert train["resources"] == {
        "memory_limit": "16Gi",
        "gpu": 2,
        "gpu_vendor": "nvidia.com/gpu",
        "gpu_type": "nvidia-tesla-a100",
    }
    assert train["image"] == "ghcr.io/acme/train:1.0"
    assert train["timeout_seconds"] == 1800
    assert train["env"] == ["MODE"]
    dumped = json.dumps(graph)
    assert "fast" not in dumped
    assert "s3-creds" not in dumped


def test_json_is_deterministic_whatever_the_edge_order() -> None:
    p = fan_out()
    shuffled = pipeline(list(p.steps), list(reversed(p.edges)))
    assert json.dumps(to_json(p)) == json.dumps(to_json(shuffled))


# --- dot and pictures ---------------------------------------------------------------------------


def test_dot_styles_edges_and_truncates_labels() -> None:
    dot = to_dot(fan_out())
    assert dot == to_dot(fan_out())
    assert "src -> w3 [style=dashed]" in dot
    assert "w3 -> collect [style=dashed]" in dot
    assert "src -> w0 [label=data]" in dot
    assert 'label="feature_0, feature_1, +4"' in to_dot(gpu_chain())


def test_dot_quotes_names_that_are_not_plain_identifiers() -> None:
    # `right-branch` needs quotes; `node` and `graph` are DOT keywords and would break unquoted.
    p = pipeline(
        [step("right-branch", 1, outputs=("x",)), step("node", 3, inputs=("x",)), step("graph", 5)],
        [Edge("right-branch", "node", "data", ("x",)), Edge("node", "graph", "after")],
        name='my "quoted" pipeline',
    )
    dot = to_dot(p)
    assert '"right-branch" -> "node"' in dot
    assert '"node" -> "graph"' in dot


@needs_dot
def test_svg_contains_every_step_name() -> None:
    for p in (diamond(), fan_out(), gpu_chain()):
        texts = svg_texts(render_image(p, "svg"))
        for s in p.steps:
            assert s.name in texts, s.name
    assert "feature_0, feature_1, +4" in svg_texts(render_image(gpu_chain(), "svg"))


@needs_dot
def test_dot_with_awkward_names_renders() -> None:
    p = pipeline(
        [step("node", 1, outputs=("x",)), step("a-b_c", 3, inputs=("x",))],
        [Edge("node", "a-b_c", "data", ("x",))],
        name='<odd> "name" \\',
    )
    texts = svg_texts(render_image(p, "svg"))
    assert {"node", "a-b_c", 'pipeline <odd> "name" \\'} <= set(texts)


@needs_dot
def test_png_has_the_png_signature() -> None:
    assert render_image(diamond(), "png").startswith(b"\x89PNG\r\n\x1a\n")


def test_missing_dot_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CellpipeError, match=r"--format svg needs Graphviz's `dot` program: apt-get install"):
        render_image(diamond(), "svg")
