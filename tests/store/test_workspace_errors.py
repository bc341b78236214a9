"""A broken workspace is one clear line naming the path and the fix (exit 2) for `run` and every
`runs` command; a run store that is not a database is moved aside, kept, and replaced."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from converter.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    ["run", "{nb}"],
    ["runs", "list"],
    ["runs", "show", "20261202"],
    ["runs", "logs", "20261202"],
    ["runs", "cancel", "20261202"],
]


def _cli() -> list[str]:
    script = shutil.which("cellpipe")
    return [script] if script else [sys.executable, "-m", "converter.cli"]


def _notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["step:one"]})]
    path = tmp_path / "nb" / "one.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


def _cellpipe(
    args: list[str], home: Path, notebook: Path, file_size_limit: int | None = None
) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if file_size_limit is not None:  # a full disk, as far as this process can tell
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.RLIM_INFINITY))

    return subprocess.run(
        [*_cli(), *(a.format(nb=notebook) for a in args)],
        env=dict(os.environ, PYTHONPATH=str(ROOT), CELLPIPE_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        check=False,
    )


def _one_clear_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def _in_process(
    args: list[str],
    home: Path,
    notebook: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> subprocess.CompletedProcess[str]:
    monkeypatch.setenv("CELLPIPE_HOME", str(home))
    capsys.readouterr()
    code = main([a.format(nb=notebook) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_home_that_is_a_file(
    tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder")
    result = _in_process(args, home, _notebook(tmp_path), monkeypatch, capsys)
    _one_clear_line(result, str(home), "is a file, not a folder", "CELLPIPE_HOME")
    assert home.read_text() == "not a folder"


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_full_disk(tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "home"
    result = _cellpipe(args, home, _notebook(tmp_path), file_size_limit=0)
    _one_clear_line(result, str(home / "runs.db"), "disk I/O error", "free some disk space", "CELLPIPE_HOME")


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_corrupt_store_is_moved_aside_and_kept(
    tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    garbage = b"this is no SQLite database\n" * 200
    (home / "runs.db").write_bytes(garbage)
    result = _in_process(args, home, _notebook(tmp_path), monkeypatch, capsys)
    assert "Traceback" not in result.stderr
    kept = list(home.glob("runs.db.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == garbage
    assert f"{home / 'runs.db'} is not a usable run store" in result.stderr and str(kept[0]) in result.stderr
    expected = 2 if args[0] == "runs" and args[1] != "list" else 0  # no run 20261202 in the new store
    assert result.returncode == expected, result.stderr
    again = _in_process(["runs", "list"], home, tmp_path, monkeypatch, capsys)
    assert again.returncode == 0 and again.stderr == ""  # the new store works
