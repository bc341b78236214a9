"""Papermill parity: on papermill's own test notebooks, `cellpipe run` and `papermill` agree.

An untagged notebook is one pipeline step, so it must behave as under papermill: both succeed, or
both fail, and when both ran it, at the same cell with the same exception (read from each tool's
executed notebook, where both mark the failing cell papermill's way). cellpipe may fail earlier,
at validation (exit 2, e.g. Python 2 syntax), where papermill only fails when it reaches the cell.

All notebooks run at once under both tools (a few at a time) from one module fixture, each in its
own folder holding the `check.txt` file `read_check.ipynb` looks for in its working directory.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = Path(str(importlib.resources.files("papermill") / "tests" / "notebooks"))
TIMEOUT = 120  # seconds for one cell (papermill) and, times three, for a whole batch

# Both fail at the import, with the same error (modules are checked where a cell imports them); cellpipe
# never pip-installs into the user's environment and names the package to install.
MISSING_MODULE = {"test_logging.ipynb": "ggplot"}


@dataclass(frozen=True)
class Outcome:
    exit_code: int  # as the tool's command line would exit
    failed_cell: tuple[str, str | None] | None  # (source, exception name) of the cell marked as failing
    stderr: str


# Each tool runs its share of the notebooks in one process, so the ~1 s import of papermill (or of
# cellpipe) is paid once per batch, not once per notebook; every notebook still gets a fresh kernel
# (papermill) or fresh step processes (cellpipe). Both write {folder: [exit code, stderr]} as JSON.
_PAPERMILL_BATCH = """
import io, json, logging, sys
import papermill
results = {}
for folder in sys.argv[2:]:
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger("papermill").addHandler(handler)
    # The notebook's own kernel, as papermill's command line uses; `-k python3` (as a user would give)
    # only where the notebook names none (papermill refuses those, cellpipe runs them as Python).
    nb = json.load(open(folder + "/notebook.ipynb"))
    kernel = None if nb.get("metadata", {}).get("kernelspec", {}).get("name") else "python3"
    try:
        papermill.execute_notebook(folder + "/notebook.ipynb", folder + "/executed.ipynb",
                                   kernel_name=kernel, progress_bar=False, cwd=folder,
                                   execution_timeout=%(timeout)d)
        results[folder] = [0, log.getvalue()]
    except Exception as error:  # papermill's command line exits 1 on any exception
        results[folder] = [1, log.getvalue() + repr(error)[-3000:]]
    logging.getLogger("papermill").removeHandler(handler)
open(sys.argv[1], "w").write(json.dumps(results))
"""
_CELLPIPE_BATCH = """
import contextlib, io, json, os, sys
from converter.cli.main import main
results = {}
for folder in sys.argv[2:]:
    os.environ["CELLPIPE_HOME"] = folder + "/cellpipe-home"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", folder + "/notebook.ipynb", "--quiet", "-o", folder + "/executed.ipynb"])
    results[folder] = [code, err.getvalue()]
open(sys.argv[1], "w").write(json.dumps(results))
"""


def _failed_cell(executed: Path) -> tuple[str, str | None] | None:
    """The cell after papermill's error anchor, with the exception its error output names."""
    if not executed.exists():
        return None
    cells = nbformat.read(executed, as_version=4).cells
    for i, cell in enumerate(cells[:-1]):
        if 'id="papermill-error-cell"' in cell.source:
            failing = cells[i + 1]
            errors = [o for o in failing.get("outputs", []) if o.output_type == "error"]
            return failing.source, errors[0].ename if errors else None
    return None


def _batch(script: str, folders: list[Path], results: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-c", script, str(results), *map(str, folders)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _notebooks() -> list[str]:
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Outcome]:
    base = tmp_path_factory.mktemp("parity")
    names = _notebooks()
    folders: dict[tuple[str, str], Path] = {}
    for tool in ("cellpipe", "papermill"):
        for name in names:
            folder = folders[tool, name] = base / tool / name.removesuffix(".ipynb")
            folder.mkdir(parents=True)
            shutil.copy(NOTEBOOKS / name, folder / "notebook.ipynb")
            (folder / "check.txt").write_text("present\n")  # read_check.ipynb wants it in its working folder
    papermill_script = _PAPERMILL_BATCH % {"timeout": TIMEOUT}
    half = len(names) // 2
    batches = [  # two papermill batches: a kernel start costs more than a cellpipe run
        (papermill_script, [folders["papermill", n] for n in names[:half]], base / "papermill-1.json"),
        (papermill_script, [folders["papermill", n] for n in names[half:]], base / "papermill-2.json"),
        (_CELLPIPE_BATCH, [folders["cellpipe", n] for n in names], base / "cellpipe.json"),
    ]
    processes = [_batch(*batch) for batch in batches]
    try:
        for process in processes:
            process.wait(timeout=TIMEOUT * 3)
    finally:
        for process in processes:
            process.kill()
    raw: dict[str, tuple[int, str]] = {}
    for _, _, results in batches:
        raw.update(json.loads(results.read_text()))
    return {
        key: Outcome(
            int(raw[str(folder)][0]), _failed_cell(folder / "executed.ipynb"), str(raw[str(folder)][1])
        )
        for key, folder in folders.items()
    }


def test_papermill_ships_its_notebooks() -> None:
    assert len(_notebooks()) >= 15, f"papermill's test notebooks not found under {NOTEBOOKS}"


@pytest.mark.parametrize("name", _notebooks())
def test_cellpipe_and_papermill_agree(name: str, outcomes: dict[tuple[str, str], Outcome]) -> None:
    ours, theirs = outcomes["cellpipe", name], outcomes["papermill", name]
    where = f"\ncellpipe stderr:\n{ours.stderr[-2000:]}\npapermill stderr:\n{theirs.stderr[-2000:]}"
    assert ours.exit_code in (0, 1, 2), where
    codes = f"cellpipe exit {ours.exit_code}, papermill exit {theirs.exit_code}"
    assert (ours.exit_code == 0) == (theirs.exit_code == 0), codes + where
    if name in MISSING_MODULE:  # checked where it is imported, as in Jupyter; the step names the package
        assert f"pip install {MISSING_MODULE[name]}" in ours.stderr, where
    if ours.exit_code == 1:  # both ran the notebook and both stopped: at the same cell, for the same reason
        assert ours.failed_cell is not None and theirs.failed_cell is not None, where
        assert ours.failed_cell[0] == theirs.failed_cell[0], where
        if (
            theirs.failed_cell[1] is not None
        ):  # IPython reports some errors (UsageError) without an error output
            assert ours.failed_cell[1] == theirs.failed_cell[1], where
