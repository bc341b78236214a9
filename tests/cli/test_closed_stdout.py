"""`cellpipe run NB --json-events | head -3`: the reader closing stdout is its choice. No traceback,
the run goes on to its own end, no step is blamed, and the exit status is the run's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHATTY = [
    ("for i in range(300):\n    print('line', i, flush=True)\nx = 1", ["step:talk"]),
    ("import time\ntime.sleep(0.5)\ny = x + 1\nprint(y)", ["step:after"]),
]


def _cli() -> list[str]:
    script = shutil.which("cellpipe")
    return [script] if script else [sys.executable, "-m", "converter.cli"]


@pytest.mark.parametrize("mode", [["--json-events"], []], ids=["json-events", "plain"])
def test_closing_stdout_early_is_not_a_failure(tmp_path: Path, mode: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in CHATTY]
    notebook = tmp_path / "chatty.ipynb"
    nbformat.write(nb, notebook)
    env = dict(os.environ, PYTHONPATH=str(ROOT), CELLPIPE_HOME=str(tmp_path / "home"))
    process = subprocess.Popen(
        [*_cli(), "run", str(notebook), *mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert process.stdout is not None and process.stderr is not None
    head = [process.stdout.readline() for _ in range(3)]  # `| head -3`
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, err
    assert all(head)
    assert "Traceback" not in err and "Error" not in err, err
    shown = subprocess.run(
        [*_cli(), "runs", "list", "--json"], capture_output=True, text=True, env=env, check=True
    )
    (run,) = json.loads(shown.stdout)
    assert run["state"] == "succeeded"
    assert {s["name"]: s["state"] for s in run["steps"]} == {"talk": "succeeded", "after": "succeeded"}
