"""The step program ships as one source: runtime.py with the step modules it inlines (values, outputs)."""

from __future__ import annotations

import ast
import subprocess
import sys

from converter.step import stepcode


def test_the_runtime_source_imports_nothing_of_cellpipe() -> None:
    tree = ast.parse(stepcode.runtime_source())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.split(".")[0] == "converter"]
    future = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    assert len(future) == 1 and tree.body.index(future[0]) == 1  # right after the docstring


def test_the_runtime_runs_where_cellpipe_is_not_installed(tmp_path: object) -> None:
    """A pod has no cellpipe package: the runtime alone must define what a step calls."""
    names = "('save_value', 'load_value', 'Capture', 'run_step')"
    probe = (
        "import sys\n"
        "sys.modules['converter'] = None  # importing any of cellpipe now fails, as on a pod\n"
        "exec(sys.argv.pop(1))\n"
        f"print(sorted(n for n in {names} if n in globals()))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", probe, stepcode.runtime_source()],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['Capture', 'load_value', 'run_step', 'save_value']"
