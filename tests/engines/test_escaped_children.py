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


ENGINE = """
import sys
from pathlib import Path
from converter.engines.base import RunRequest
from converter.engines.local.engine import LocalEngine
from converter.notebook.reader import read_notebook

notebook = Path(sys.argv[2])
LocalEngine(Path(sys.argv[1]), fork_server=False).run(RunRequest(read_notebook(notebook), notebook), [])
"""


def test_step_subprocesses_die_with_a_killed_engine(tmp_path: Path) -> None:
    """Without the fork server (GPU steps, CELLPIPE_NO_FORK) a step is the engine's own child."""
    import os
    import subprocess
    import sys

    pidfile = tmp_path / "step.pid"
    nb = nbformat.v4.new_notebook()
    code = f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)"
    nb.cells = [nbformat.v4.new_code_cell(code, metadata={"tags": ["step:wait"]})]
    notebook = tmp_path / "wait.ipynb"
    nbformat.write(nb, notebook)
    root = Path(__file__).resolve().parents[2]
    engine = subprocess.Popen(
        [sys.executable, "-c", ENGINE, str(tmp_path / "home"), str(notebook)],
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        step = int(pidfile.read_text())
    finally:
        engine.kill()
        engine.wait()
    assert _gone(step)
