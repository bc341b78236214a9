"""Output paths (`run -o`, `--junit`, `compile -o`) are checked before any work (exit 2, one line,
no run started, nothing written), and the files follow the umask as papermill's do."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from converter.cli.main import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cellpipe-home"
    monkeypatch.setenv("CELLPIPE_HOME", str(folder))
    return folder


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1\nprint(x)", metadata={"tags": ["step:one"]})]
    path = tmp_path / "nb" / "one.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    return path


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def _runs(capsys: pytest.CaptureFixture[str]) -> list[object]:
    capsys.readouterr()
    assert main(["runs", "list", "--json"]) == 0
    runs: list[object] = json.loads(capsys.readouterr().out)
    return runs


@pytest.mark.parametrize(
    ("option", "target", "message"),
    [
        ("-o", "{tmp}", "it is a folder"),
        ("-o", "/proc/version/x.ipynb", "/proc/version is not a folder"),
        ("-o", "{tmp}/nb/one.ipynb/x.ipynb", "one.ipynb is not a folder"),
        ("--junit", "{tmp}", "it is a folder"),
        ("--junit", "/proc/version/junit.xml", "/proc/version is not a folder"),
    ],
)
def test_bad_output_paths_are_refused_before_the_run(
    home: Path,
    notebook: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    target: str,
    message: str,
) -> None:
    where = target.format(tmp=tmp_path)
    assert main(["run", str(notebook), "--quiet", option, where]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write {option} {where}" in err and message in err
    assert _runs(capsys) == []  # nothing ran


def test_compile_output_folder_is_checked_first(
    notebook: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["compile", str(notebook), "-o", str(blocker), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it is a file, not a folder" in err
    assert main(["compile", str(notebook), "-o", str(blocker / "sub"), "-q"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_written_files_follow_the_umask(
    home: Path, notebook: Path, tmp_path: Path, umask: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report, compiled = tmp_path / "out.ipynb", tmp_path / "junit.xml", tmp_path / "compiled"
    assert main(["run", str(notebook), "--quiet", "-o", str(out), "--junit", str(report)]) == 0
    assert main(["compile", str(notebook), "-o", str(compiled), "-q"]) == 0
    files = [out, report, *compiled.iterdir()]
    assert len(files) >= 4
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {p.name: 0o640 for p in files}
