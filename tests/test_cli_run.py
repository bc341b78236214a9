"""`cellpipe run` and `cellpipe runs`, end to end: real runs of real notebooks on the local engine.

Every test gets its own CELLPIPE_HOME and its own copy of the notebooks it runs (steps run in the
notebook's folder and may write files there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from hypothesis import given
from hypothesis import strategies as st
from papermill.cli import _resolve_type

from converter.cli import main
from converter.cli_run import coerce, papermill_value
from converter.errors import CellpipeError
from converter.model import Parameter

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_notebooks"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cellpipe-home"
    monkeypatch.setenv("CELLPIPE_HOME", str(folder))
    return folder


def _sample(tmp_path: Path, name: str) -> Path:
    target = tmp_path / "nb" / name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(SAMPLES / name, target)
    return target


def _notebook(path: Path, *cells: tuple[str, list[str]]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _cli_command() -> list[str]:
    """The installed console script; a checkout that was never `pip install`ed runs the same `main`."""
    script = shutil.which("cellpipe")
    return [script] if script else [sys.executable, "-m", "converter.cli"]


def _cellpipe(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [*_cli_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )


# ---------------------------------------------------------------- parameters, as papermill reads them

_PARAM_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["True", "False", "None", "true", "1", "-3", "1e3", "1.10", "nan", "inf", "0x10", "1_000", " 7 "]
    ),
    st.integers().map(str),
    st.floats(allow_nan=False).map(str),
)


@given(_PARAM_TEXT)
def test_p_values_are_typed_exactly_as_papermill_types_them(text: str) -> None:
    ours, theirs = papermill_value(text), _resolve_type(text)
    assert type(ours) is type(theirs)
    assert ours == theirs or (ours != ours and theirs != theirs)  # nan


def _param(kind: str) -> Parameter:
    defaults: dict[str, Any] = {
        "int": 1,
        "float": 1.0,
        "bool": True,
        "str": "a",
        "list": [1],
        "dict": {"a": 1},
    }
    return Parameter("p", kind, defaults[kind], 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("int", "7", 7),
        ("int", "7.0", 7),
        ("float", "3", 3.0),
        ("float", "2.5e-3", 0.0025),
        ("bool", "True", True),
        ("bool", "false", False),
        ("bool", "0", False),
        ("str", "1.10", "1.10"),  # the text as typed: papermill would make it the float 1.1
        ("str", "None", "None"),
        ("list", "[1, 2.5, 'x']", [1, 2.5, "x"]),
        ("dict", '{"lr": 0.1, "layers": [64, 32]}', {"lr": 0.1, "layers": [64, 32]}),
    ],
)
def test_p_values_coerced_to_the_declared_type(kind: str, raw: str, expected: object) -> None:
    value = coerce(_param(kind), papermill_value(raw), raw, "nb.ipynb")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("int", "abc"),
        ("int", "2.5"),
        ("int", "True"),
        ("float", "fast"),
        ("float", "True"),
        ("bool", "maybe"),
        ("bool", "2"),
        ("list", "{'a': 1}"),
        ("list", "[1, 2"),
        ("dict", "[1]"),
        ("list", "[.nan]"),
    ],
)
def test_values_that_do_not_parse_name_parameter_type_and_notebook(kind: str, raw: str) -> None:
    with pytest.raises(CellpipeError) as error:
        coerce(_param(kind), papermill_value(raw), raw, "nb.ipynb")
    message = str(error.value)
    assert "nb.ipynb" in message and "'p'" in message and kind in message and repr(raw) in message


def test_yaml_values_keep_their_type_but_must_fit(tmp_path: Path) -> None:
    assert coerce(_param("str"), 2024, None, "nb") == "2024"
    assert coerce(_param("float"), 1, None, "nb") == 1.0
    with pytest.raises(CellpipeError):
        coerce(_param("int"), "12", None, "nb")  # quoted in YAML: a string, not an int


def test_unknown_parameter_and_bad_value_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notebook = _sample(tmp_path, "sklearn_tabular.ipynb")
    assert main(["run", str(notebook), "-p", "max_iters", "5"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'max_iters'" in err and "sklearn_tabular.ipynb" in err and "max_iter" in err
    assert main(["run", str(notebook), "-p", "max_iter", "lots"]) == 2
    err = capsys.readouterr().err
    assert "parameter 'max_iter' is int; cannot use 'lots'" in err and "sklearn_tabular.ipynb" in err
    assert "Traceback" not in err


def test_parameters_file_then_p(tmp_path: Path) -> None:
    from converter.cli_run import parameter_values
    from converter.reader import read_notebook

    pipeline = read_notebook(_sample(tmp_path, "pandas_etl.ipynb"))
    params = tmp_path / "params.yaml"
    params.write_text("start_date: 2024-02-01\nn_days: 10\nregions: [north, south]\n")
    values = parameter_values(pipeline, [["n_days", "12"]], [str(params)])
    assert values == {"start_date": "2024-02-01", "n_days": 12, "regions": ["north", "south"]}
    params.write_text("- not\n- a mapping\n")
    with pytest.raises(CellpipeError, match="NAME: VALUE"):
        parameter_values(pipeline, [], [str(params)])
    with pytest.raises(CellpipeError, match="cannot read"):
        parameter_values(pipeline, [], [str(tmp_path / "missing.yaml")])


def test_kfp_engine_is_a_clear_user_error_until_it_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if (ROOT / "converter" / "engines" / "kfp.py").exists():
        pytest.skip("the kfp engine exists now")
    notebook = _sample(tmp_path, "plain_untagged.ipynb")
    assert main(["run", str(notebook), "--engine", "kfp"]) == 2
    assert "not available yet" in capsys.readouterr().err
