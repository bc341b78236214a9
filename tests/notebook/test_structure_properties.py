"""Random notebook JSON shapes never crash the reader: a notebook is read, or refused with the
project's own error naming what is wrong (and, for a cell's problem, which cell).

The shapes are nbformat's keys holding any JSON (tags as a string, numbers, nulls; source as a
number; cells that are lists; metadata that is a string), mixed with well-formed cells so the
later stages of the reader see what the structural check lets through."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converter.errors import CellpipeError, InvalidNotebook
from converter.notebook.reader import check_node, read_notebook

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 12345), st.floats(allow_nan=False), st.text(max_size=8)
)
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
TAG_LIKE = st.sampled_from(
    ["step:a", "step:b", "after:a", "imports", "parameters", "metrics", "skip", "cpu:1"]
)
TAGS = st.one_of(st.lists(st.one_of(TAG_LIKE, ANY_JSON), max_size=4), TAG_LIKE, ANY_JSON)
SOURCES = st.one_of(
    st.sampled_from(["x = 1", "y = x + 1", "print(y)", "import os", "n = 3"]),
    st.lists(st.sampled_from(["x = 1\n", "print(x)\n"]), max_size=3),
    ANY_JSON,
)
CELLPIPE_METADATA = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"step": ANY_JSON, "after": ANY_JSON, "role": ANY_JSON, "cpu": ANY_JSON}
    ),
    ANY_JSON,
)


KALE_METADATA = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "pipeline_name": ANY_JSON,
            "steps_defaults": ANY_JSON,
            "volumes": ANY_JSON,
            "enable_caching": ANY_JSON,
            "docker_image": ANY_JSON,
            "experiment": ANY_JSON,
        },
    ),
    ANY_JSON,
)


@st.composite
def cells(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(ANY_JSON)  # not even an object
    cell: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        cell["cell_type"] = draw(st.one_of(st.sampled_from(["code", "code", "markdown", "raw"]), ANY_JSON))
    if draw(st.integers(0, 9)):
        cell["source"] = draw(SOURCES)
    if draw(st.integers(0, 5)):
        metadata: Any = {}
        if draw(st.booleans()):
            metadata["tags"] = draw(TAGS)
        if draw(st.integers(0, 3)) == 0:
            metadata["cellpipe"] = draw(CELLPIPE_METADATA)
        cell["metadata"] = (
            draw(st.one_of(st.just(metadata), ANY_JSON)) if draw(st.integers(0, 9)) == 0 else metadata
        )
    if draw(st.booleans()):
        cell["outputs"] = draw(ANY_JSON)
    return cell


@st.composite
def notebooks(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(ANY_JSON)
    nb: dict[str, Any] = {"nbformat": draw(st.sampled_from([4, 4, 4, 3, 5, "4", None])), "nbformat_minor": 5}
    if draw(st.integers(0, 9)):
        nb["cells"] = draw(st.lists(cells(), max_size=6)) if draw(st.integers(0, 9)) else draw(ANY_JSON)
    if draw(st.booleans()):
        nb["metadata"] = draw(
            st.one_of(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "kernelspec": ANY_JSON,
                        "language_info": ANY_JSON,
                        "cellpipe": CELLPIPE_METADATA,
                        "kubeflow_notebook": KALE_METADATA,
                    },
                ),
                ANY_JSON,
            )
        )
    return nb


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nb=notebooks())
def test_any_json_shape_is_read_or_refused_with_our_error(nb: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nb.ipynb"
        path.write_text(json.dumps(nb), encoding="utf-8")
        try:
            read_notebook(path)
        except InvalidNotebook as error:
            assert any(p.severity == "error" for p in error.problems)
        except CellpipeError:
            pass
    if isinstance(nb, dict):  # the server hands the parsed JSON to check_node directly
        with contextlib.suppress(CellpipeError):
            check_node(nb, "nb.ipynb")


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ({"cell_type": "code", "source": "x = 1", "metadata": {"tags": [1, None, {}]}}, "tag 1 is a number"),
        ({"cell_type": "code", "source": "x = 1", "metadata": {"tags": "step:a"}}, "not a string ('step:a')"),
        (
            {"cell_type": "code", "source": 12345, "metadata": {}},
            "source must be a string or a list of strings",
        ),
        ({"cell_type": "code", "source": ["x = 1", 2], "metadata": {}}, "source must be a string or a list"),
        ({"cell_type": "code", "source": "x = 1", "metadata": "tags"}, "metadata must be an object"),
        ({"cell_type": 7, "source": "x = 1"}, "cell_type must be a string"),
        (["x = 1"], "a cell must be a JSON object, not a list"),
    ],
)
def test_structural_problems_name_the_cell(cell: object, message: str, tmp_path: Path) -> None:
    good = {"cell_type": "code", "source": "y = 2", "metadata": {"tags": ["step:b"]}}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [good, cell]}))
    with pytest.raises(InvalidNotebook) as caught:
        read_notebook(path)
    errors = [p for p in caught.value.problems if p.severity == "error"]
    assert errors and all(p.cell == 1 for p in errors), errors
    assert any(message in p.message for p in errors), errors
