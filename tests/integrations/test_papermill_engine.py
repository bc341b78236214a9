"""`papermill --engine cellpipe`: papermill's front end runs the notebook as a cellpipe pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import nbformat
import papermill
import pytest
from papermill.engines import papermill_engines

from converter.integrations.papermill_engine import CellpipeEngine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLPIPE_HOME", str(tmp_path / "cellpipe-home"))
    monkeypatch.chdir(tmp_path)  # papermill runs the notebook in the working directory
    papermill_engines.register("cellpipe", CellpipeEngine)  # also when the package is not installed


def _notebook(path: Path, fail: bool) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [
        ("rows = 3\nlabel = 'a'", ["parameters"]),
        ("import os\ndata = list(range(rows))\nopen('made.txt', 'w').write(label)", ["step:make"]),
        (
            "total = sum(data) / (0 if FAIL else 1)\nprint('total', total)".replace("FAIL", str(fail)),
            ["step:sum"],
        ),
        ("doubled = [d * 2 for d in data]\ndoubled", ["step:double"]),
    ]
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in cells]
    nbformat.write(nb, path)
    return path


def test_runs_the_pipeline_and_fills_papermills_notebook(tmp_path: Path) -> None:
    source = _notebook(tmp_path / "in.ipynb", fail=False)
    nb = papermill.execute_notebook(
        str(source),
        str(tmp_path / "out.ipynb"),
        parameters={"rows": 5},
        engine_name="cellpipe",
        progress_bar=False,
    )
    written = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert written == nb
    by_tag = {c.metadata["tags"][0]: c for c in written.cells}
    assert by_tag["injected-parameters"].source == "# Parameters\nrows = 5\n"
    assert by_tag["step:sum"].outputs[0]["text"] == "total 10.0\n"
    assert by_tag["step:double"].outputs[0]["data"]["text/plain"] == "[0, 2, 4, 6, 8]"
    assert (tmp_path / "made.txt").read_text() == "a"  # steps ran in papermill's working directory
    assert written.metadata.papermill["parameters"] == {"rows": 5}
    assert all(c.metadata.papermill["status"] == "completed" for c in written.cells)


def test_failed_step_raises_papermills_error_and_marks_the_cell(tmp_path: Path) -> None:
    source = _notebook(tmp_path / "in.ipynb", fail=True)
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(
            str(source), str(tmp_path / "out.ipynb"), engine_name="cellpipe", progress_bar=False
        )
    assert error.value.ename == "ZeroDivisionError"
    written = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    failing = next(i for i, c in enumerate(written.cells) if "step:sum" in c.metadata.get("tags", []))
    assert error.value.exec_count == written.cells[failing].execution_count
    assert "papermill-error-cell-tag" in written.cells[0].metadata["tags"]
    assert "papermill-error-cell-tag" in written.cells[failing - 1].metadata["tags"]
    assert written.metadata.papermill["exception"] is True


def test_entry_point_is_declared_for_this_class() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "papermill.engine"
    ]
    module, _, name = declared["cellpipe"].partition(":")
    assert (module, name) == (CellpipeEngine.__module__, CellpipeEngine.__name__)


def test_papermill_command_line_with_engine_flag(tmp_path: Path) -> None:
    if not any(ep.name == "cellpipe" for ep in entry_points(group="papermill.engine")):
        pytest.skip("cellpipe is not installed (pip install -e .), so papermill cannot find its engine")
    source = _notebook(tmp_path / "in.ipynb", fail=False)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "--engine",
            "cellpipe",
            str(source),
            str(tmp_path / "out.ipynb"),
            "-p",
            "rows",
            "4",
            "--no-progress-bar",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    written = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    sums = [c for c in written.cells if "step:sum" in c.metadata.get("tags", [])]
    assert sums[0].outputs[0]["text"] == "total 6.0\n"
