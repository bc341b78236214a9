"""The executed notebook (`cellpipe run -o`) has papermill's shape, checked against papermill itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

from converter.model import CodeCell, Parameter, Pipeline, Step, StepSettings
from converter.reports import executed_notebook

MARKER = "papermill-error-cell-tag"


def _notebook(fail: bool) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_code_cell("n = 2\nname = 'x'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("total = n * 10\nprint('total', total)", metadata={"tags": ["step:first"]}),
        nbformat.v4.new_markdown_cell("between"),
        nbformat.v4.new_code_cell("total + 1", metadata={"tags": ["step:second"]}),
        nbformat.v4.new_code_cell("raise ValueError('boom')" if fail else "print('done')"),
        nbformat.v4.new_code_cell("print('after')"),
    ]
    nb.cells = cells
    # Stale results of an earlier run that the executed copy must not keep.
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="stale\n")]
    nb.cells[2].execution_count = 41
    return nb


def _pipeline(nb_path: Path) -> Pipeline:
    def cell(i: int, src: str) -> CodeCell:
        return CodeCell(i, src, src)

    first = Step(
        "first",
        (cell(2, "total = n * 10\nprint('total', total)"),),
        (),
        ("total",),
        ("n",),
        (),
        (),
        (),
        StepSettings(),
    )
    second = Step(
        "second",
        (cell(4, "total + 1"), cell(5, "..."), cell(6, "print('after')")),
        ("total",),
        (),
        (),
        (),
        (),
        (),
        StepSettings(),
    )
    return Pipeline(
        name="demo",
        notebook=str(nb_path),
        description="",
        experiment=None,
        image="python:3.11-slim",
        imports=(),
        functions=(),
        parameters=(Parameter("n", "int", 2, 1), Parameter("name", "str", "x", 1)),
        steps=(first, second),
        edges=(),
    )


def _outputs(fail: bool) -> dict[str, dict[str, Any]]:
    """What the step runtime writes to cell_outputs.json for the two steps (counts restart per step)."""
    first = {
        "cells": [
            {
                "index": 2,
                "role": "step",
                "execution_count": 1,
                "outputs": [{"output_type": "stream", "name": "stdout", "text": "total 30\n"}],
            }
        ],
        "status": "ok",
        "error_cell": None,
    }
    result = {
        "output_type": "execute_result",
        "execution_count": 1,
        "metadata": {},
        "data": {"text/plain": "31"},
    }
    cells: list[dict[str, Any]] = [{"index": 4, "role": "step", "execution_count": 1, "outputs": [result]}]
    if fail:
        error = {
            "output_type": "error",
            "ename": "ValueError",
            "evalue": "boom",
            "traceback": ["Traceback (most recent call last):", "ValueError: boom"],
        }
        cells.append({"index": 5, "role": "step", "execution_count": 2, "outputs": [error]})
    else:
        cells.append(
            {
                "index": 5,
                "role": "step",
                "execution_count": 2,
                "outputs": [{"output_type": "stream", "name": "stdout", "text": "done\n"}],
            }
        )
        cells.append(
            {
                "index": 6,
                "role": "step",
                "execution_count": 3,
                "outputs": [{"output_type": "stream", "name": "stdout", "text": "after\n"}],
            }
        )
    second = {"cells": cells, "status": "error" if fail else "ok", "error_cell": 5 if fail else None}
    return {"first": first, "second": second}


def _build(tmp_path: Path, fail: bool, parameters: dict[str, Any]) -> tuple[Path, nbformat.NotebookNode]:
    path = tmp_path / "demo.ipynb"
    nbformat.write(_notebook(fail), path)
    nb = executed_notebook.build(
        nbformat.read(path, as_version=4),
        _pipeline(path),
        _outputs(fail),
        parameters=parameters,
        input_path=str(path),
        output_path=str(tmp_path / "out.ipynb"),
        start_time=1_700_000_000.0,
        end_time=1_700_000_003.5,
    )
    return path, nb


def _shape(nb: nbformat.NotebookNode) -> list[tuple[str, list[str], int | None, list[str]]]:
    """What must match papermill: cell kinds, tags, counts, and the text of every output."""
    shape = []
    for cell in nb.cells:
        texts = []
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                texts.append(output.text)
            elif output.output_type == "execute_result":
                texts.append(f"[{output.execution_count}] {output.data['text/plain']}")
            elif output.output_type == "error":
                texts.append(f"{output.ename}: {output.evalue}")
        shape.append(
            (cell.cell_type, list(cell.metadata.get("tags", [])), cell.get("execution_count"), texts)
        )
    return shape


@pytest.mark.parametrize("fail", [False, True], ids=["succeeds", "fails"])
def test_same_shape_as_papermill(tmp_path: Path, fail: bool) -> None:
    path, ours = _build(tmp_path, fail, {"n": 3})
    theirs_path = tmp_path / "papermill.ipynb"
    if fail:
        with pytest.raises(papermill.PapermillExecutionError):
            papermill.execute_notebook(
                str(path),
                str(theirs_path),
                parameters={"n": 3},
                kernel_name="python3",
                progress_bar=False,
                cwd=str(tmp_path),
            )
    else:
        papermill.execute_notebook(
            str(path),
            str(theirs_path),
            parameters={"n": 3},
            kernel_name="python3",
            progress_bar=False,
            cwd=str(tmp_path),
        )
    theirs = nbformat.read(theirs_path, as_version=4)
    assert _shape(ours) == _shape(theirs)
    # The injected cell and the error markers are papermill's, character for character.
    for mine, pms in zip(ours.cells, theirs.cells, strict=True):
        if set(mine.metadata.get("tags", [])) & {"injected-parameters", MARKER}:
            assert mine.source == pms.source
    # Per-cell status as papermill leaves it: completed / failed / pending.
    statuses = [
        c.metadata.papermill["status"] for c in ours.cells if MARKER not in c.metadata.get("tags", [])
    ]
    expected = [
        c.metadata.papermill["status"] for c in theirs.cells if MARKER not in c.metadata.get("tags", [])
    ]
    assert statuses == expected
    assert ours.metadata.papermill["exception"] == theirs.metadata.papermill["exception"]
    assert ours.metadata.papermill["parameters"] == theirs.metadata.papermill["parameters"] == {"n": 3}


def test_no_injected_cell_without_parameters_and_metadata(tmp_path: Path) -> None:
    _, nb = _build(tmp_path, False, {})
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    meta = nb.metadata.papermill
    assert meta["parameters"] == {}
    assert meta["default_parameters"] == {"n": 2, "name": "x"}
    assert meta["duration"] == pytest.approx(3.5)
    assert meta["start_time"].startswith("2023-11-14T22:13:20")
    assert meta["exception"] is None
    assert "stale" not in json.dumps(nb)


def test_cells_of_a_step_that_never_ran_stay_pending(tmp_path: Path) -> None:
    path = tmp_path / "demo.ipynb"
    nbformat.write(_notebook(False), path)
    nb = executed_notebook.build(
        nbformat.read(path, as_version=4),
        _pipeline(path),
        {"first": _outputs(False)["first"]},
        parameters={},
        input_path=str(path),
        output_path="out.ipynb",
        start_time=0.0,
        end_time=1.0,
    )
    step_two = [c for c in nb.cells if c.cell_type == "code"][2:]
    assert [c.metadata.papermill["status"] for c in step_two] == ["pending"] * 3
    assert all(c.execution_count is None and c.outputs == [] for c in step_two)


def test_write_is_valid_and_atomic(tmp_path: Path) -> None:
    _, nb = _build(tmp_path, True, {"n": 3, "name": "y"})
    out = tmp_path / "sub" / "out.ipynb"
    executed_notebook.write(nb, out)
    back = nbformat.read(out, as_version=4)
    nbformat.validate(back)
    assert [p.name for p in out.parent.iterdir()] == ["out.ipynb"]  # no temporary file left behind
    broken = nbformat.from_dict({**nb, "cells": [{"cell_type": "code", "id": "x"}]})
    with pytest.raises(nbformat.ValidationError):
        executed_notebook.write(broken, out)
    assert nbformat.read(out, as_version=4) == back  # a failed write leaves the old file intact


def test_read_step_outputs_skips_missing_and_broken(tmp_path: Path) -> None:
    for step in ("first", "second"):
        (tmp_path / step).mkdir()
    (tmp_path / "first" / "cell_outputs.json").write_text(json.dumps(_outputs(False)["first"]))
    (tmp_path / "second" / "cell_outputs.json").write_text("{not json")
    folders = {name: tmp_path / name for name in ("first", "second", "never_ran")}
    assert executed_notebook.read_step_outputs(folders) == {"first": _outputs(False)["first"]}


def test_a_step_that_died_outside_its_cells_still_fails_a_cell(tmp_path: Path) -> None:
    """Killed or timed out mid-step (no error output of its own): the cell it was running is blamed."""
    path = tmp_path / "demo.ipynb"
    nbformat.write(_notebook(False), path)
    outputs = _outputs(False)
    outputs["second"] = {**outputs["second"], "cells": outputs["second"]["cells"][:1], "status": "error"}
    nb = executed_notebook.build(
        nbformat.read(path, as_version=4),
        _pipeline(path),
        outputs,
        parameters={},
        input_path=str(path),
        output_path="out.ipynb",
        start_time=0.0,
        end_time=1.0,
        failures={"second": "timed out after 90s"},
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[2].outputs[0]["data"]["text/plain"] == "31"  # ran before the step died
    blamed = code[3]
    assert blamed.metadata.papermill["status"] == "failed"
    assert (
        blamed.outputs[-1]["ename"] == "StepFailed" and blamed.outputs[-1]["evalue"] == "timed out after 90s"
    )
    assert MARKER in nb.cells[0].metadata["tags"] and f"In [{blamed.execution_count}]" in nb.cells[0].source
    assert code[4].metadata.papermill["status"] == "pending"
    nbformat.validate(nb)

    # A step that never wrote anything (killed at start-up) is blamed on its first cell.
    nb = executed_notebook.build(
        nbformat.read(path, as_version=4),
        _pipeline(path),
        {"first": outputs["first"]},
        parameters={},
        input_path=str(path),
        output_path="out.ipynb",
        start_time=0.0,
        end_time=1.0,
        failures={"second": "killed by SIGKILL (out of memory?)"},
    )
    first_of_second = [c for c in nb.cells if c.cell_type == "code"][2]
    assert first_of_second.outputs[0]["evalue"] == "killed by SIGKILL (out of memory?)"
