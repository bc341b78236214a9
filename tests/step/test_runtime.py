"""The step runtime, run the way pipelines run it: `python -c PROGRAM ARGS` in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pandas as pd
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from converter.step import stepcode
from converter.step.values import METRICS_LOG_PREFIX, load_value, save_value

RUNTIME = stepcode.runtime_source()  # runtime.py with the modules it inlines


def cell(index: int, code: str, role: str = "step") -> dict[str, Any]:
    return {"index": index, "role": role, "code": code}


def make_spec(*cells: dict[str, Any], **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"step": "train", "notebook": "nb.ipynb", "cells": list(cells), "inputs": []}
    spec.update({"outputs": [], "parameters": {}, "metrics": [], "requirements": {}, "ipython": False})
    spec.update(fields)
    return spec


def run(spec: dict[str, Any], *args: object, cwd: Path, env: dict[str, str] | None = None) -> Any:
    program = RUNTIME + f"\nraise SystemExit(run_step({spec!r}, sys.argv[1:]))\n"
    argv = [sys.executable, "-c", program, *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def cell_outputs(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def as_notebook(result: dict[str, Any]) -> nbformat.NotebookNode:
    """Wrap recorded outputs in a notebook, as the local engine writes them back."""
    nb = nbformat.v4.new_notebook()
    for done in result["cells"]:
        code = nbformat.v4.new_code_cell("pass", execution_count=done["execution_count"])
        code.outputs = [nbformat.from_dict(o) for o in done["outputs"]]
        nb.cells.append(code)
    return nb


PRODUCER = """
import numpy as np, pandas as pd
from sklearn.linear_model import LogisticRegression

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

arr = np.arange(12, dtype=np.float32).reshape(3, 4)
frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None], "t": pd.date_range("2024-01-01", periods=3)})
frame.index.name = "row"
int_columns = pd.DataFrame({0: [1.5, 2.5], 1: ["p", "q"]})
mixed_objects = pd.DataFrame({"m": pd.Series([1, "two", 3.0], dtype=object)})
series = pd.Series([0.5, 1.5], index=["u", "v"], name="score")
model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
plain = {"n": 1, "f": 0.25, "s": "é", "l": [True, None, [1, 2]], "d": {}}
pairs = (1, 2)
point = Point(3, 4)
"""

CONSUMER = """
import numpy as np, pandas as pd
pd.testing.assert_frame_equal(frame, pd.DataFrame(
    {"a": [1, 2, 3], "b": ["x", "y", None], "t": pd.date_range("2024-01-01", periods=3)},
    index=pd.Index([0, 1, 2], name="row")))
assert arr.dtype == np.float32 and arr.tolist() == np.arange(12).reshape(3, 4).tolist()
pd.testing.assert_frame_equal(int_columns, pd.DataFrame({0: [1.5, 2.5], 1: ["p", "q"]}))
assert mixed_objects["m"].tolist() == [1, "two", 3.0] and mixed_objects["m"].dtype == object
pd.testing.assert_series_equal(series, pd.Series([0.5, 1.5], index=["u", "v"], name="score"))
assert model.predict([[0.0], [3.0]]).tolist() == [0, 1]
assert plain == {"n": 1, "f": 0.25, "s": "é", "l": [True, None, [1, 2]], "d": {}}
assert pairs == (1, 2) and type(pairs) is tuple
assert (point.x, point.y, type(point).__name__) == (3, 4, "Point")
print("all equal")
"""

EXPECTED_FORMATS = {
    "arr": "npy",
    "frame": "arrow",
    "int_columns": "pkl",
    "mixed_objects": "pkl",
    "series": "arrow",
    "model": "joblib",
    "plain": "json",
    "pairs": "pkl",
    "point": "pkl",
}


def test_every_serializer_round_trips_between_two_steps(tmp_path: Path) -> None:
    names = list(EXPECTED_FORMATS)
    out_args = [a for n in names for a in ("--output", n, tmp_path / "art" / n)]
    produced = run(make_spec(cell(1, PRODUCER), outputs=names), *out_args, cwd=tmp_path)
    assert produced.returncode == 0, produced.stderr
    formats = {n: json.loads((tmp_path / "art" / n / "meta.json").read_text())["format"] for n in names}
    assert formats == EXPECTED_FORMATS

    in_args = [a for n in names for a in ("--input", n, tmp_path / "art" / n)]
    consumed = run(make_spec(cell(2, CONSUMER), inputs=names), *in_args, cwd=tmp_path)
    assert consumed.returncode == 0, consumed.stderr
    assert "all equal" in consumed.stdout


def test_save_and_load_in_process(tmp_path: Path) -> None:
    big = np.random.default_rng(0).random((500, 400))
    assert save_value(big, tmp_path / "a") == "npy"
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["nbytes"] - big.nbytes < 1024  # raw bytes plus the .npy header: no pickle, no compression
    loaded = load_value(tmp_path / "a")
    assert isinstance(loaded, np.ndarray) and np.array_equal(loaded, big)

    objects = np.array([{"a": 1}, None], dtype=object)
    assert save_value(objects, tmp_path / "o") == "pkl"  # np.save would need pickle for these
    assert load_value(tmp_path / "o")[0] == {"a": 1}  # type: ignore[index]

    # Re-saving into the same directory must not leave the old format behind to be loaded.
    assert save_value([1, "x"], tmp_path / "a") == "json"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["meta.json", "value.json"]
    assert load_value(tmp_path / "a") == [1, "x"]

    assert save_value({1: "int key"}, tmp_path / "k") == "pkl"  # JSON would turn the key into "1"
    assert load_value(tmp_path / "k") == {1: "int key"}
    # Arrow (like Parquet) would not keep a tuple as the Series' name.
    assert save_value(pd.Series([1, 2], name=("a", "b")), tmp_path / "s") == "pkl"
    named = load_value(tmp_path / "s")
    assert isinstance(named, pd.Series) and named.name == ("a", "b")
    assert save_value(pd.Series([1, 2]), tmp_path / "u") == "columns"
    pd.testing.assert_series_equal(load_value(tmp_path / "u"), pd.Series([1, 2]))
    with pytest.raises(FileNotFoundError):
        load_value(tmp_path / "nothing")


def test_a_large_array_input_is_memory_mapped_copy_on_write(tmp_path: Path) -> None:
    """Zero-copy hand-over: the consumer maps the stored file; its changes never reach the file."""
    big = np.arange(1 << 18, dtype=np.float64)  # 2 MiB: mapped
    save_value(big, tmp_path / "a")
    stored = (tmp_path / "a" / "value.npy").read_bytes()
    loaded = load_value(tmp_path / "a")
    assert type(loaded) is np.ndarray and loaded.flags.writeable  # a plain array to the cells
    assert isinstance(loaded.base, np.memmap)
    loaded += 1  # in place, as a cell may
    assert loaded[0] == 1 and (tmp_path / "a" / "value.npy").read_bytes() == stored
    assert save_value(loaded, tmp_path / "b") == "npy"  # passed on as an array, not pickled
    assert np.array_equal(load_value(tmp_path / "b"), big + 1)
    small = load_value_of(np.arange(10), tmp_path / "s")
    assert type(small) is np.ndarray and not isinstance(small.base, np.memmap)  # small: read outright


def load_value_of(value: object, folder: Path) -> Any:
    save_value(value, folder)
    return load_value(folder)


def test_frames_travel_as_uncompressed_arrow_and_old_parquet_artifacts_still_load(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": np.arange(1000), "v": np.linspace(0, 1, 1000), "s": ["a", "b"] * 500})
    assert save_value(frame, tmp_path / "f") == "arrow"
    import pyarrow.ipc

    with pyarrow.ipc.open_file(tmp_path / "f" / "value.arrow") as reader:  # a standard Arrow IPC file
        assert reader.schema.names[:3] == ["id", "v", "s"]
    loaded = load_value(tmp_path / "f")
    pd.testing.assert_frame_equal(loaded, frame)
    loaded.loc[0, "v"] = 5.0  # writable, as a frame read from anywhere else
    pd.testing.assert_frame_equal(load_value(tmp_path / "f"), frame)
    old = tmp_path / "old"
    old.mkdir()
    frame.to_parquet(old / "value.parquet", engine="pyarrow", compression=None)
    (old / "meta.json").write_text(json.dumps({"format": "parquet"}))
    pd.testing.assert_frame_equal(load_value(old), frame)


def mapped(array: Any) -> bool:
    while array is not None and not isinstance(array, np.memmap):
        array = array.base
    return array is not None


def test_a_numeric_frame_travels_as_mapped_columns_copy_on_write(tmp_path: Path) -> None:
    rows = 200_000  # 1.6 MB per column: mapped
    frame = pd.DataFrame(
        {
            "id": np.arange(rows),
            "v": np.linspace(0, 1, rows),
            "g": (np.arange(rows) % 7).astype(np.int32),
            "ok": np.arange(rows) % 2 == 0,
            "t": pd.date_range("2024-01-01", periods=rows, freq="s"),
        }
    )
    assert save_value(frame, tmp_path / "f") == "columns"
    assert sorted(p.name for p in (tmp_path / "f" / "value.columns").iterdir()) == [
        f"{i}.npy" for i in range(5)
    ]
    loaded = load_value(tmp_path / "f")
    pd.testing.assert_frame_equal(loaded, frame)  # dtypes, order, index
    assert all(mapped(loaded[c].to_numpy()) for c in ("id", "v"))  # views of the mapped files: not copied
    loaded.loc[0, "v"] = 5.0
    loaded["id"] += 1
    pd.testing.assert_frame_equal(load_value(tmp_path / "f"), frame)  # the stored columns never change
    stepped = pd.DataFrame({"a": [1.5, 2.5]}, index=pd.RangeIndex(10, 14, 2, name="r"))
    assert save_value(stepped, tmp_path / "r") == "columns"
    pd.testing.assert_frame_equal(load_value(tmp_path / "r"), stepped)
    series = pd.Series(np.arange(3.0), name="score")
    assert save_value(series, tmp_path / "s") == "columns"
    pd.testing.assert_series_equal(load_value(tmp_path / "s"), series)
    assert save_value(frame.set_index("id"), tmp_path / "i") == "arrow"  # any other index: Arrow
    nullable = pd.DataFrame({"a": pd.array([1, None], dtype="Int64")})
    assert save_value(nullable, tmp_path / "n") == "arrow"  # extension dtypes: Arrow
    assert save_value([1], tmp_path / "f") == "json"  # the columns folder does not linger
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["meta.json", "value.json"]


def test_parameters_arrive_typed(tmp_path: Path) -> None:
    types = {"lr": "float", "epochs": "int", "debug": "bool", "name": "str", "layers": "list", "opts": "dict"}
    check = (
        "assert (lr, epochs, debug, name, layers, opts) == (0.5, 3, True, 'a b', [1, 2], {'k': None})\n"
        "assert [type(v).__name__ for v in (lr, epochs, debug, name)] == ['float', 'int', 'bool', 'str']\n"
    )
    values = {
        "lr": "0.5",
        "epochs": "3",
        "debug": "true",
        "name": "a b",
        "layers": "[1, 2]",
        "opts": '{"k": null}',
    }
    args = [a for n, v in values.items() for a in ("--param", n, v)]
    result = run(make_spec(cell(1, check), parameters=types), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("raw", "expected"), [("True", True), ("False", False), ("1", True), ("0", False)])
def test_bool_parameter_spellings(raw: str, expected: bool, tmp_path: Path) -> None:
    spec = make_spec(cell(1, f"assert flag is {expected}\n"), parameters={"flag": "bool"})
    result = run(spec, "--param", "flag", raw, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_bad_parameter_value_is_a_clear_error(tmp_path: Path) -> None:
    result = run(
        make_spec(cell(1, "pass\n"), parameters={"epochs": "int"}), "--param", "epochs", "many", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "step 'train'" in result.stderr and "'epochs'" in result.stderr
    assert "Traceback" not in result.stderr


def test_outputs_are_valid_nbformat_and_rendered_in_the_report(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "class Rich:\n"
        "    def _repr_html_(self): return '<b>rich</b>'\n"
        "    def __repr__(self): return 'Rich()'\n"
        "class Picture:\n"
        "    def _repr_png_(self): return b'\\x89PNG fake'\n"
        "print('to stdout')\n"
        "print('to <stderr>', file=sys.stderr)\n"
        "display(Rich(), Picture())\n"
        "'<script>alert(1)</script>'\n"
    )
    spec = make_spec(
        cell(1, "import os\n", "imports"), cell(4, code), cell(5, "x = 41\nx + 1\n"), cell(6, "x;\n")
    )
    outputs, report = tmp_path / "out" / "cells.json", tmp_path / "out" / "report.html"
    result = run(spec, "--cell-outputs", outputs, "--report", report, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "to stdout" in result.stdout and "to <stderr>" in result.stderr  # still tee'd to the real streams

    recorded = cell_outputs(outputs)
    assert recorded["status"] == "ok" and recorded["error_cell"] is None
    nbformat.validate(as_notebook(recorded))
    by_index = {c["index"]: c["outputs"] for c in recorded["cells"]}
    stream, err, shown, picture, result_out = by_index[4]
    assert (stream["name"], stream["text"]) == ("stdout", "to stdout\n")
    assert (err["name"], err["text"]) == ("stderr", "to <stderr>\n")
    assert shown["output_type"] == "display_data"
    assert shown["data"]["text/html"] == "<b>rich</b>" and shown["data"]["text/plain"] == "Rich()"
    assert picture["data"]["image/png"] == "iVBORyBmYWtl"  # base64, as nbformat stores images
    assert result_out["output_type"] == "execute_result"
    assert by_index[5] == [
        {"output_type": "execute_result", "data": {"text/plain": "42"}, "metadata": {}, "execution_count": 3}
    ]
    assert by_index[6] == []  # a trailing semicolon hides the value, as in Jupyter

    page = report.read_text()
    assert "<b>rich</b>" in page and "data:image/png;base64," in page
    assert "&lt;script&gt;" in page and "<script>" not in page  # sources and text outputs are escaped
    assert "<details>" in page  # the imports cell is collapsed


def test_failing_cell_records_the_error_and_still_writes_results(tmp_path: Path) -> None:
    spec = make_spec(
        cell(3, "a = 1\nprint('before')\n"),
        cell(7, "b = 2\nb / (a - 1)\n"),
        cell(9, "print('never')\n"),
        outputs=["b"],
    )
    outputs, report = tmp_path / "cells.json", tmp_path / "report.html"
    result = run(
        spec, "--output", "b", tmp_path / "b", "--cell-outputs", outputs, "--report", report, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "Cell In[2], line 2" in result.stderr and "b / (a - 1)" in result.stderr  # as Jupyter shows it
    assert "step 'train'" in result.stderr and "cell 7" in result.stderr.splitlines()[-1]
    assert "never" not in result.stdout
    assert not (tmp_path / "b").exists()

    recorded = cell_outputs(outputs)
    assert recorded["status"] == "error" and recorded["error_cell"] == 7
    assert [c["index"] for c in recorded["cells"]] == [3, 7]
    assert all(c["seconds"] >= 0 and c["role"] == "step" for c in recorded["cells"])
    error = recorded["cells"][1]["outputs"][-1]
    assert (error["output_type"], error["ename"], error["evalue"]) == (
        "error",
        "ZeroDivisionError",
        "division by zero",
    )
    assert not any("runtime" in line for line in error["traceback"])  # only the user's frames
    nbformat.validate(as_notebook(recorded))
    page = report.read_text()
    assert "ZeroDivisionError" in page and "not run" in page


def test_a_raises_exception_cell_shows_its_error_the_step_goes_on_then_fails(tmp_path: Path) -> None:
    """As papermill: every cell runs, the outputs are saved, and the run fails on the first such error."""
    spec = make_spec(
        cell(1, "d = {}\n"),
        {**cell(2, "d['missing']\n"), "raises": True},
        cell(3, "print('after', d)\n"),
        outputs=["d"],
    )
    outputs = tmp_path / "cells.json"
    result = run(spec, "--output", "d", tmp_path / "d", "--cell-outputs", outputs, cwd=tmp_path)
    assert result.returncode == 1 and "cell 2 raised KeyError: 'missing'" in result.stderr
    recorded = cell_outputs(outputs)
    assert recorded["status"] == "error" and recorded["error_cell"] == 2
    error = recorded["cells"][1]["outputs"][-1]
    assert (error["output_type"], error["ename"]) == ("error", "KeyError")
    assert recorded["cells"][2]["outputs"][0]["text"] == "after {}\n"
    assert load_value(tmp_path / "d") == {}


def test_syntax_error_names_the_cell(tmp_path: Path) -> None:
    result = run(make_spec(cell(2, "x = (\n")), "--cell-outputs", tmp_path / "c.json", cwd=tmp_path)
    assert result.returncode == 1
    assert "cell 2 raised SyntaxError: incomplete input (line 1)" in result.stderr
    assert cell_outputs(tmp_path / "c.json")["error_cell"] == 2


def test_system_exit_zero_stops_successfully_and_nonzero_fails(tmp_path: Path) -> None:
    stop = make_spec(cell(1, "x = 1\n"), cell(2, "raise SystemExit(0)\n"), cell(3, "x = 2\n"))
    result = run(stop, "--output", "x", tmp_path / "x", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert load_value(tmp_path / "x") == 1

    failed = run(make_spec(cell(1, "import sys\nsys.exit(3)\n")), cwd=tmp_path)
    assert failed.returncode == 1 and "SystemExit" in failed.stderr


def test_missing_output_variable_names_step_and_variable(tmp_path: Path) -> None:
    spec = make_spec(cell(1, "model = None if False else 1\n"), outputs=["modle"])
    result = run(
        spec, "--output", "modle", tmp_path / "m", "--cell-outputs", tmp_path / "c.json", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "step 'train'" in result.stderr and "'modle'" in result.stderr
    assert "Traceback" not in result.stderr
    assert cell_outputs(tmp_path / "c.json")["status"] == "error"


def test_missing_input_argument_is_a_clear_error(tmp_path: Path) -> None:
    result = run(make_spec(cell(1, "print(df)\n"), inputs=["df"]), cwd=tmp_path)
    assert result.returncode == 1 and "--input" in result.stderr and "df" in result.stderr


def test_metrics_and_kfp_executor_output(tmp_path: Path) -> None:
    code = "import numpy as np\naccuracy = np.float32(0.75)\nepochs = 3\nconverged = True\nlabel = 'x'\n"
    spec = make_spec(cell(1, code), metrics=["accuracy", "epochs", "converged", "label", "absent"])
    metrics, executor = tmp_path / "metrics.json", tmp_path / "kfp" / "outputs" / "output_metadata.json"
    result = run(spec, "--metrics", metrics, "--executor-output", executor, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(metrics.read_text()) == {"accuracy": 0.75, "epochs": 3, "converged": True}
    assert json.loads(executor.read_text()) == {
        "artifacts": {
            "metrics": {"artifacts": [{"metadata": {"accuracy": 0.75, "epochs": 3.0, "converged": 1.0}}]}
        }
    }
    # ...and one log line, which is how the KFP engine reads metrics back (the REST API does not show them)
    line = METRICS_LOG_PREFIX + '{"accuracy": 0.75, "converged": 1.0, "epochs": 3.0}'
    assert line in result.stdout.splitlines()
    assert "'label'" in result.stderr and "'absent'" in result.stderr  # warned, not fatal


def test_ipython_magics_and_shell_escapes(tmp_path: Path) -> None:
    transform = TransformerManager().transform_cell
    cells = [
        cell(1, transform("%time x = 1\n")),
        cell(2, "x\n"),
        cell(3, transform("!echo hi\n")),
        cell(4, transform("%%capture cap\nprint('captured')\n")),
        cell(5, "from IPython.display import display, HTML\ndisplay(HTML('<i>h</i>'))\ncap.stdout\n"),
    ]
    outputs = tmp_path / "c.json"
    result = run(make_spec(*cells, ipython=True), "--cell-outputs", outputs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    recorded = cell_outputs(outputs)
    nbformat.validate(as_notebook(recorded))
    by_index = {c["index"]: c["outputs"] for c in recorded["cells"]}
    assert "Wall time" in by_index[1][0]["text"]
    assert by_index[2][0]["data"]["text/plain"] == "1"
    assert by_index[3][0]["name"] == "stdout" and "hi" in by_index[3][0]["text"]
    assert by_index[4] == []  # %%capture swallowed it
    shown, value = by_index[5]
    assert shown["data"]["text/html"] == "<i>h</i>"
    assert value["data"]["text/plain"] == "'captured\\n'"


IPYTHON_VERDICT = """
from IPython.core.interactiveshell import InteractiveShell
result = InteractiveShell.instance().run_cell("%time z = 1 / 0")
print("fails" if result.error_in_exec is not None else "goes on")
"""


def test_an_error_inside_a_magic_is_handled_as_ipython_handles_it(tmp_path: Path) -> None:
    """IPython 8's %time shows the error and the cell goes on; IPython 9's fails the cell. Either way,
    the step does what a notebook with this IPython would do, and records the error as ipykernel does
    (papermill's notebooks keep the kernel's coloured traceback); the step log has no colours."""
    verdict = subprocess.run(
        [sys.executable, "-c", IPYTHON_VERDICT], capture_output=True, text=True, timeout=60
    ).stdout.split()[-1]
    transform = TransformerManager().transform_cell
    outputs = tmp_path / "c.json"
    spec = make_spec(cell(6, transform("%time z = 1 / 0\n")), ipython=True)
    result = run(spec, "--cell-outputs", outputs, cwd=tmp_path)
    assert result.returncode == (1 if verdict == "fails" else 0), result.stderr
    errors = [o for c in cell_outputs(outputs)["cells"] for o in c["outputs"] if o["output_type"] == "error"]
    assert [e["ename"] for e in errors] == ["ZeroDivisionError"]
    assert "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero" in "".join(errors[0]["traceback"])
    assert "ZeroDivisionError: division by zero" in result.stderr and "\x1b[" not in result.stderr
    assert cell_outputs(outputs)["status"] == ("error" if verdict == "fails" else "ok")


def test_ipython_display_is_recorded_without_magics(tmp_path: Path) -> None:
    code = "from IPython.display import HTML, display\ndisplay(HTML('<i>h</i>'))\n"
    outputs = tmp_path / "c.json"
    result = run(make_spec(cell(1, code)), "--cell-outputs", outputs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (shown,) = cell_outputs(outputs)["cells"][0]["outputs"]
    assert shown["output_type"] == "display_data" and shown["data"]["text/html"] == "<i>h</i>"


def papermill_outputs(tmp_path: Path, sources: list[str]) -> list[list[dict[str, Any]]]:
    """Each cell's outputs when a real Jupyter kernel runs the cells through papermill."""
    import papermill

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "pm.ipynb")
    with contextlib.suppress(papermill.PapermillExecutionError):  # the notebook keeps the error
        papermill.execute_notebook(
            tmp_path / "pm.ipynb", tmp_path / "pm-out.ipynb", progress_bar=False, cwd=str(tmp_path)
        )
    done = nbformat.read(tmp_path / "pm-out.ipynb", 4)
    return [c.outputs for c in done.cells if c.cell_type == "code"]


def shown(outputs: list[dict[str, Any]]) -> list[tuple[object, ...]]:
    """What a reader sees of each output: kind, MIME types, text (addresses blanked), error name."""
    import re

    def text(value: object) -> str:
        joined = "".join(value) if isinstance(value, list) else str(value or "")
        return re.sub(r"0x[0-9a-f]+", "0x?", joined)

    return [
        (
            o["output_type"],
            tuple(sorted(o.get("data", {}))),
            text(o.get("data", {}).get("text/plain") or o.get("text")),
            o.get("ename"),
        )
        for o in outputs
    ]


DISPLAY_CELLS = [
    "%matplotlib inline\nimport matplotlib.pyplot as plt\nimport pandas as pd\n",
    "x = 1\nx;\n",
    "type(1)\n",
    "plt.plot([1, 2, 3])\n",
    "fig, ax = plt.subplots()\nax.plot([3, 1])\nplt.close(fig)\nfig\n",
    "pd.DataFrame({f'column_{i}': range(3) for i in range(30)})\n",
    "list(range(1000))\n",
    "from IPython.display import display, Markdown\ndisplay(Markdown('**hi**'), 42)\n",
    "import os\nprint(os.environ.get('FORCE_COLOR'), os.environ.get('MPLBACKEND'))\n",
    "print('\\x1b[31mred\\x1b[0m')\n",
]


def test_cells_show_what_jupyter_shows(tmp_path: Path) -> None:
    """The runtime's outputs against a real kernel's (papermill): figures as PNG, hidden `x;`, `int`,
    pandas' notebook repr (HTML and 20 columns of text), `display()`, the kernel's environment,
    and `%matplotlib inline` working in an imports cell."""
    expected = [shown(o) for o in papermill_outputs(tmp_path, DISPLAY_CELLS)]
    cells = [cell(1, DISPLAY_CELLS[0], "imports")]
    cells += [cell(i + 2, source) for i, source in enumerate(DISPLAY_CELLS[1:])]
    outputs, report = tmp_path / "c.json", tmp_path / "report.html"
    result = run(make_spec(*cells), "--cell-outputs", outputs, "--report", report, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    recorded = cell_outputs(outputs)
    nbformat.validate(as_notebook(recorded))
    got = [shown(c["outputs"]) for c in recorded["cells"]]
    assert got == expected
    assert got[3][-1][:2] == ("display_data", ("image/png", "text/plain"))  # the inline backend's PNG
    assert got[4][0][:2] == ("execute_result", ("image/png", "text/plain"))  # a figure as the result
    assert report.read_text().count("data:image/png;base64,") == 2


def fake_pip(tmp_path: Path, exit_code: int) -> dict[str, str]:
    """A `pip` package shadowing the real one: logs its arguments and 'installs' fakemod."""
    lib = tmp_path / "lib"
    (lib / "pip").mkdir(parents=True)
    (lib / "pip" / "__init__.py").write_text("")
    (lib / "pip" / "__main__.py").write_text(
        "import sys, pathlib\n"
        "here = pathlib.Path(__file__).parent.parent\n"
        "(here / 'pip-args.txt').write_text(' '.join(sys.argv[1:]))\n"
        f"(here / 'fakemod.py').write_text('VALUE = 7') if {exit_code} == 0 else None\n"
        f"raise SystemExit({exit_code})\n"
    )
    return {**os.environ, "PYTHONPATH": str(lib)}


def test_requirements_install_only_what_is_missing(tmp_path: Path) -> None:
    env = fake_pip(tmp_path, 0)
    spec = make_spec(
        cell(1, "import fakemod\nv = fakemod.VALUE\n"),
        requirements={"json": "json-dist", "fakemod": "fake==1.0"},
    )
    result = run(spec, "--output", "v", tmp_path / "v", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "lib" / "pip-args.txt").read_text().split()
    assert args[0] == "install" and args[-1] == "fake==1.0" and "json-dist" not in args
    assert load_value(tmp_path / "v") == 7


def test_requirements_present_spawn_no_pip(tmp_path: Path) -> None:
    env = fake_pip(tmp_path, 3)
    result = run(
        make_spec(cell(1, "import json\n"), requirements={"json": "json-dist"}), cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "lib" / "pip-args.txt").exists()


def test_pip_failure_and_a_missing_module_locally_are_clear_errors(tmp_path: Path) -> None:
    env = fake_pip(tmp_path, 3)
    spec = make_spec(cell(1, "import fakemod\n"), requirements={"fakemod": "fake"})
    failed = run(spec, cwd=tmp_path, env=env)
    assert failed.returncode == 1
    assert "pip install fake failed" in failed.stderr
    assert "cell 1 raised ModuleNotFoundError: No module named 'fakemod'" in failed.stderr.splitlines()[-1]

    (tmp_path / "lib" / "pip-args.txt").unlink()
    refused = run(spec, "--no-install", cwd=tmp_path, env=env)  # the local engine: Jupyter's error
    assert refused.returncode == 1
    last = refused.stderr.splitlines()[-1]
    assert last.endswith(
        "cell 1 raised ModuleNotFoundError: No module named 'fakemod' (install it with: pip install fake)"
    )
    assert "--no-install" not in refused.stderr and not (tmp_path / "lib" / "pip-args.txt").exists()


def test_modules_are_checked_where_they_are_imported(tmp_path: Path) -> None:
    """%%writefile makes a module and `!pip install` installs one before the cells that import them:
    nothing is checked up front, so both imports work as in Jupyter (the local engine: --no-install)."""
    env = fake_pip(tmp_path, 0)  # `pip install fake` writes lib/fakemod.py
    spec = make_spec(
        cell(1, "%%writefile mymod.py\ndef f():\n    return 42\n"),
        cell(2, "from mymod import f\n!{sys.executable} -m pip install fake\n"),
        cell(3, "import fakemod\nv = (f(), fakemod.VALUE)\n"),
        requirements={"mymod": "mymod", "fakemod": "fake"},
    )
    spec["cells"][1]["code"] = "import sys\n" + spec["cells"][1]["code"]
    result = run(spec, "--no-install", "--output", "v", tmp_path / "v", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert load_value(tmp_path / "v") == (42, 7)


def test_trivial_step_imports_nothing_heavy(tmp_path: Path) -> None:
    """IPython is always there (cells run in a kernel-like shell; the fork server preloads it)."""
    code = "import sys\nheavy = sorted({'numpy', 'pandas', 'matplotlib'} & set(sys.modules))\n"
    result = run(make_spec(cell(1, code)), "--output", "heavy", tmp_path / "h", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert load_value(tmp_path / "h") == []


COUNTING_STR = """
import sys

class Counted(str):
    '''A chunk that counts the characters any `+` involving it copies (accumulating by += does).'''
    copied = 0

    def __add__(self, other):
        Counted.copied += len(self) + len(other)
        return str.__add__(self, other)

    def __radd__(self, other):
        Counted.copied += len(self) + len(other)
        return str.__add__(other, self)
"""


def test_printed_output_is_captured_without_copying_what_came_before(tmp_path: Path) -> None:
    """The shape of the cost: capturing N writes copies O(N) characters, not O(N^2) (no wall clock)."""
    code = COUNTING_STR + (
        "for i in range(5000):\n"
        "    sys.stdout.write(Counted('x' * 94 + f' {i:05d}\\n'))\n"
        "copied = Counted.copied\n"
    )
    outputs = tmp_path / "cells.json"
    result = run(
        make_spec(cell(1, code)),
        "--output",
        "copied",
        tmp_path / "c",
        "--cell-outputs",
        outputs,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert load_value(tmp_path / "c") == 0  # was ~5000**2 * 50 characters with `text += chunk`
    (stream,) = cell_outputs(outputs)["cells"][0]["outputs"]
    lines = stream["text"].splitlines()
    assert len(lines) == 5000 and lines[0].endswith(" 00000") and lines[-1].endswith(" 04999")
    assert result.stdout.count("\n") == 5000  # tee'd through to the log, every line


def test_output_past_the_limit_keeps_head_and_tail_and_says_what_was_cut(tmp_path: Path) -> None:
    code = "import sys\nfor i in range(1000):\n    print(f'line {i:04d}', 'x' * 40)\n"
    code += "print('end', file=sys.stderr)\n"
    outputs = tmp_path / "cells.json"
    env = {**os.environ, "CELLPIPE_OUTPUT_LIMIT": "10000"}
    result = run(make_spec(cell(1, code)), "--cell-outputs", outputs, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1000  # the log keeps every line
    stdout, stderr = cell_outputs(outputs)["cells"][0]["outputs"]
    assert stderr == {"output_type": "stream", "name": "stderr", "text": "end\n"}
    text = stdout["text"]
    assert len(text) < 10000 + 300  # bounded: the limit plus the note
    lines = text.splitlines()
    assert lines[0].startswith("line 0000 ") and lines[-1].startswith("line 0999 ")
    (note,) = [line for line in lines if "cellpipe" in line]
    kept = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    cut = 1000 - len(kept)
    assert kept == sorted(kept) and cut > 0
    assert f"{cut:,} lines" in note and "CELLPIPE_OUTPUT_LIMIT=10000" in note and "step log" in note
    missing = sorted(set(range(1000)) - set(kept))
    assert missing == list(range(missing[0], missing[-1] + 1))  # one contiguous cut, where the note is
    assert lines.index(note) == missing[0]


@pytest.mark.parametrize(
    ("code", "kind", "fix"),
    [
        ("handle = open('data.txt', 'w')\n", "_io.TextIOWrapper", "handle.read()"),
        ("handle = (i for i in range(3))\n", "builtins.generator", "list(handle)"),
        ("import threading\nhandle = threading.Lock()\n", "_thread.lock", "create it in the step"),
        ("import socket\nhandle = socket.socket()\n", "socket.socket", "open the connection in the step"),
        (
            "import sqlite3\nhandle = sqlite3.connect(':memory:')\n",
            "sqlite3.Connection",
            "open the connection",
        ),
    ],
)
def test_a_value_that_cannot_cross_a_step_boundary_is_named_with_the_fix(
    tmp_path: Path, code: str, kind: str, fix: str
) -> None:
    artifact = tmp_path / "artifacts" / "0a1b2c3d" / "handle"
    result = run(make_spec(cell(1, code), outputs=["handle"]), "--output", "handle", artifact, cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert f"value 'handle' ({kind}) made in step 'train' cannot be passed to the steps that read it" in last
    assert fix in last and str(tmp_path) not in last and "0a1b2c3d" not in last  # never a temp path
    assert "Traceback" not in result.stderr
