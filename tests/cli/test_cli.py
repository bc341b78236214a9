"""The converter's commands as users and CI scripts call them: validate, compile, graph.

Most tests call `converter.cli.main.main` in-process (an exception escaping it fails the test, which is
what a traceback would be); the user-error tests also run the installed `cellpipe` script, since
only a real process shows whether a traceback reaches the terminal.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from converter.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
NEEDS_DOT = pytest.mark.skipif(
    shutil.which("dot") is None, reason="needs Graphviz's `dot` (apt-get install graphviz)"
)
SAMPLES = ROOT / "sample_notebooks"
BAD_TAGS = ROOT / "tests" / "notebooks" / "bad_tags.ipynb"
ETL = SAMPLES / "pandas_etl.ipynb"
PROBLEM_LINE = re.compile(r"^(?P<nb>.+?): cell (?P<cell>\d+)( \[(?P<tag>[^\]]+)\])?: (?P<message>.+)$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------ validate


def test_validate_a_valid_notebook(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", str(SAMPLES / "sklearn_tabular.ipynb"))
    assert (code, err) == (0, "")
    assert out == f"{SAMPLES / 'sklearn_tabular.ipynb'}: valid, 4 step(s), no errors\n"


def test_validate_with_warnings_is_still_valid(capsys: pytest.CaptureFixture[str]) -> None:
    path = SAMPLES / "kale_style.ipynb"
    code, out, err = run(capsys, "validate", str(path))
    assert code == 0
    assert out == f"{path}: valid, 5 step(s), no errors, 1 warning(s)\n"
    assert err == (
        f"{path}: cell 1: warning: code before the first step is left out of the pipeline "
        "(tag it to include it)\n"
    )


def test_validate_lists_every_problem_in_the_contract_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", str(BAD_TAGS))
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert len(lines) == 8
    located = [PROBLEM_LINE.match(line) for line in lines]
    assert all(m is not None and m["nb"] == str(BAD_TAGS) for m in located), lines
    assert [(int(m["cell"]), m["tag"]) for m in located if m] == [
        (3, "memory:4gigs"),
        (4, "gpu:-1"),
        (5, "cpu:abc"),
        (6, "after:nonexistent"),
        (7, "step:load"),
        (8, "step:9lives"),
        (9, "step:broken_syntax"),
        (10, "step:uses_undefined"),
    ]


def test_validate_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "--json", str(BAD_TAGS))
    report = json.loads(out)
    assert code == 2
    assert report["notebook"] == str(BAD_TAGS) and report["valid"] is False
    assert len(report["problems"]) == 8
    for problem in report["problems"]:
        assert set(problem) == {"cell", "tag", "severity", "message"}
        assert isinstance(problem["cell"], int) and problem["severity"] == "error"
    assert report["problems"][0] == {
        "cell": 3,
        "tag": "memory:4gigs",
        "severity": "error",
        "message": "'4gigs' is not a valid memory value "
        "(expected a memory quantity such as 512Mi, 4Gi or 1G)",
    }

    code, out, err = run(capsys, "validate", "--json", str(SAMPLES / "kale_style.ipynb"))
    report = json.loads(out)
    assert (code, err) == (0, "")
    assert report["valid"] is True
    assert report["problems"] == [
        {
            "cell": 1,
            "tag": None,
            "severity": "warning",
            "message": "code before the first step is left out of the pipeline (tag it to include it)",
        }
    ]
    assert report["steps"] == ["load_data", "split_data", "train_logreg", "train_tree", "compare_models"]


def test_validate_json_notebook_level_problem_has_no_cell(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    nb.metadata["cellpipe"] = ["not", "an", "object"]
    path = tmp_path / "odd.ipynb"
    nbformat.write(nb, path)
    code, out, _ = run(capsys, "validate", "--json", str(path))
    assert code == 2
    (problem,) = json.loads(out)["problems"]
    assert (problem["cell"], problem["tag"], problem["severity"]) == (None, "metadata.cellpipe", "error")
    assert problem["message"] == "metadata.cellpipe must be a JSON object, not list"


# ------------------------------------------------------------------------------------- compile


def test_compile_writes_yaml_and_dsl_into_the_output_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "nested" / "out"
    code, out, err = run(capsys, "compile", str(ETL), "-o", str(out_dir))
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["pandas-etl.py", "pandas-etl.yaml"]
    assert out.splitlines() == [str(out_dir / "pandas-etl.py"), str(out_dir / "pandas-etl.yaml")]
    assert "warning: step 'publish' reads file 'out/region_report.csv'" in err  # warnings still shown
    code, out, err = run(capsys, "compile", str(ETL), "-o", str(out_dir), "-q")
    assert (code, out, err) == (0, "", "")


def test_compile_defaults_to_the_current_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "compile", str(SAMPLES / "plain_untagged.ipynb"), "-q")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain-untagged.py", "plain-untagged.yaml"]


def test_compile_invalid_notebook_prints_problems_and_a_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "compile", str(BAD_TAGS), "-o", str(tmp_path))
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert len(lines) == 9 and all(PROBLEM_LINE.match(line) for line in lines[:8])
    assert lines[-1] == f"{BAD_TAGS}: invalid (8 error(s))"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------- graph


def test_graph_text_to_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "graph", str(ETL))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("pipeline pandas-etl (6 steps,")
    assert lines[1] == "level 0  extract"
    assert [line.split()[0] for line in lines[2:5]] == ["level", "aggregate_sales", "daily_trends"]
    assert "clean_customers" in lines[2]  # the three parallel branches share level 1
    assert "join_report (after)" in lines[-1]


def test_graph_json_is_the_rest_graph(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "graph", str(ETL), "--format", "json")
    graph = json.loads(out)
    assert code == 0
    assert [n["id"] for n in graph["nodes"]] == [
        "extract",
        "clean_customers",
        "aggregate_sales",
        "daily_trends",
        "join_report",
        "publish",
    ]
    for node in graph["nodes"]:
        assert {"id", "cells", "inputs", "outputs", "resources"} <= set(node)
    edges = {(e["source"], e["target"], e["kind"]) for e in graph["edges"]}
    assert ("join_report", "publish", "after") in edges
    assert ("extract", "daily_trends", "data") in edges
    target = tmp_path / "graph.json"
    assert run(capsys, "graph", str(ETL), "--format", "json", "-o", str(target)) == (0, "", "")
    assert json.loads(target.read_text()) == graph


@pytest.mark.parametrize(
    ("fmt", "start", "inside"),
    [
        ("text", b"pipeline pandas-etl", b"daily_trends"),
        ("dot", b'digraph "pandas-etl" {', b"join_report -> publish"),
        pytest.param("svg", b"<?xml", b"daily_trends", marks=NEEDS_DOT),
        pytest.param("png", b"\x89PNG\r\n\x1a\n", b"IHDR", marks=NEEDS_DOT),
    ],
)
def test_graph_pictures_to_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fmt: str, start: bytes, inside: bytes
) -> None:
    target = tmp_path / "pictures" / f"graph.{fmt}"
    assert run(capsys, "graph", str(ETL), "--format", fmt, "-o", str(target)) == (0, "", "")
    data = target.read_bytes()
    assert data.startswith(start) and inside in data
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temporary files


def test_graph_of_an_invalid_notebook_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "graph", str(BAD_TAGS))
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == f"{BAD_TAGS}: invalid (8 error(s))"


# --------------------------------------------------------------------------------- user errors


@pytest.fixture
def not_notebooks(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "text.ipynb").write_text("this is not JSON\n")
    (tmp_path / "json.ipynb").write_text('{"a": 1}\n')
    (tmp_path / "folder.ipynb").mkdir()
    return {
        "missing": tmp_path / "missing.ipynb",
        "text": tmp_path / "text.ipynb",
        "json": tmp_path / "json.ipynb",
        "folder": tmp_path / "folder.ipynb",
    }


@pytest.mark.parametrize("command", [["validate"], ["validate", "--json"], ["compile"], ["graph"]])
@pytest.mark.parametrize("kind", ["missing", "text", "json", "folder"])
def test_unreadable_input_is_a_clear_message(
    capsys: pytest.CaptureFixture[str], not_notebooks: dict[str, Path], command: list[str], kind: str
) -> None:
    path = not_notebooks[kind]
    code, out, err = run(capsys, *command, str(path))
    assert (code, out) == (2, "")
    expected = {"missing": "no such notebook", "folder": "is a folder, not a notebook file"}.get(
        kind, "not a readable Jupyter notebook"
    )
    assert err.startswith(f"cellpipe: {path}: {expected}"), err
    assert len(err.splitlines()) == 1


def test_an_output_path_that_is_a_file_is_a_clear_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder\n")
    code, _, err = run(capsys, "compile", str(ETL), "-o", str(blocker), "-q")
    assert code == 2
    assert err.startswith(f"cellpipe: cannot write -o {blocker}: it is a file")
    assert blocker.read_text() == "a file, not a folder\n"


# The console script installed with this interpreter (found first: a version manager's shim is slow).
_SCRIPT = Path(sys.executable).parent / "cellpipe"
CELLPIPE = str(_SCRIPT) if _SCRIPT.is_file() else shutil.which("cellpipe")


@pytest.mark.skipif(CELLPIPE is None, reason="the cellpipe script is not installed")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["compile", "{tmp}/missing.ipynb", "-o", "{tmp}/out"],
            "cellpipe: {tmp}/missing.ipynb: no such notebook",
        ),
        (["validate", "{tmp}/text.ipynb"], "cellpipe: {tmp}/text.ipynb: not a readable Jupyter notebook"),
        (["graph", str(BAD_TAGS), "--format", "svg"], f"{BAD_TAGS}: invalid (8 error(s))"),
    ],
    ids=["missing-file", "not-a-notebook", "invalid-notebook"],
)
def test_the_installed_script_prints_no_traceback(
    not_notebooks: dict[str, Path], argv: list[str], message: str
) -> None:
    tmp = str(not_notebooks["missing"].parent)
    result = subprocess.run(
        [str(CELLPIPE), *(a.format(tmp=tmp) for a in argv)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message.format(tmp=tmp) in result.stderr
    assert result.stdout == ""


def test_usage_errors_exit_2_from_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["graph", str(ETL), "--format", "gif"])
    assert raised.value.code == 2
    assert "invalid choice: 'gif'" in capsys.readouterr().err


def test_notebook_with_a_cell_in_every_step_role(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A small end-to-end: validate, compile and graph agree on the same notebook."""
    nb = new_notebook()
    for source, tags in [
        ("import math", ["imports"]),
        ("n = 4", ["parameters"]),
        ("x = math.sqrt(n)", ["step:first"]),
        ("y = x * 2", ["step:second", "cpu:1"]),
        ("y", ["metrics"]),
    ]:
        cell = new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    path = tmp_path / "roles.ipynb"
    nbformat.write(nb, path)
    assert run(capsys, "validate", str(path))[1] == f"{path}: valid, 2 step(s), no errors\n"
    assert run(capsys, "compile", str(path), "-o", str(tmp_path / "out"), "-q")[0] == 0
    graph = json.loads(run(capsys, "graph", str(path), "--format", "json")[1])
    assert [(e["source"], e["target"], e["kind"]) for e in graph["edges"]] == [("first", "second", "data")]
