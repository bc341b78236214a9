"""A step's descendants end with it, even those that left its process group and session
(`subprocess.Popen(..., start_new_session=True)`, daemons): when the step ends, times out, or its
run is over, through the fork server and as a plain subprocess."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import psutil
import pytest

from converter.engines.base import RunRequest
from converter.engines.local.engine import LocalEngine
from converter.notebook.reader import read_notebook

ESCAPE = """
import subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
)
open({pidfile!r}, "w").write(str(child.pid))
{then}
x = 1
"""


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("fork_server", [True, False], ids=["fork-server", "subprocess"])
@pytest.mark.parametrize(
    ("then", "tags", "state"),
    [("", [], "succeeded"), ("time.sleep(300)", ["timeout:2s"], "failed")],
    ids=["step-ends", "step-times-out"],
)
def test_escaped_children_end_with_their_step(
    tmp_path: Path, fork_server: bool, then: str, tags: list[str], state: str
) -> None:
    pidfile = tmp_path / "child.pid"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            ESCAPE.format(pidfile=str(pidfile), then=then), metadata={"tags": ["step:escape", *tags]}
        ),
        nbformat.v4.new_code_cell("print(x)", metadata={"tags": ["step:after"]}),
    ]
    notebook = tmp_path / "escape.ipynb"
    nbformat.write(nb, notebook)
    engine = LocalEngine(tmp_path / "home", fork_server=fork_server)
    result = engine.run(RunRequest(read_notebook(notebook), notebook, use_cache=False), [])
    assert result.step_states["escape"] == state
    child = int(pidfile.read_text())
    assert _gone(child), psutil.Process(child).cmdline()
